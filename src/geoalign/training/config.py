"""Typed training configs, loaded from YAML.

A config file has the sections `model`, `data`, `optim`, `trainer` and `eval`, plus `name` and
`reproduces` (the paper table it reproduces, or "none"). Unknown keys are errors that name the file
and the key, so a typo never silently falls back to a default. `key.path=value` overrides (the CLI's
`--set`) are applied before validation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import yaml

from geoalign.errors import DataError
from geoalign.io_atomic import atomic_output

# --- value rules: each returns None when the value is fine, else what to use instead -------------

Rule = Callable[[Any], "str | None"]


def at_least(low: float, example: Any = None) -> Rule:
    """A finite number >= low (NaN and infinities are refused)."""

    def rule(value: Any) -> str | None:
        if value is None or (math.isfinite(value) and value >= low):
            return None
        hint = f" (e.g. {example})" if example is not None else ""
        return f"use a finite number >= {low:g}{hint}"

    return rule


def above(low: float, example: Any = None) -> Rule:
    """A finite number > low."""

    def rule(value: Any) -> str | None:
        if value is None or (math.isfinite(value) and value > low):
            return None
        hint = f" (e.g. {example})" if example is not None else ""
        return f"use a finite number > {low:g}{hint}"

    return rule


def steps_limit(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "use -1 (no limit) or a number of steps >= 1"


def share(value: float) -> str | None:
    return None if math.isfinite(value) and 0 < value <= 1 else "use a share in (0, 1]"


def keys_of(config: Callable[[], type]) -> Rule:
    """A mapping whose keys are fields of the dataclass `config()` returns (imported lazily)."""

    def rule(value: dict[str, Any]) -> str | None:
        known = {f.name for f in fields(config())}
        unknown = sorted(set(value) - known)
        return f"unknown key(s) {unknown}; known: {sorted(known)}" if unknown else None

    return rule


def _image_head_config() -> type:
    from geoalign.nn.image_head import ImageHeadConfig

    return ImageHeadConfig


def _location_encoder_config() -> type:
    from geoalign.nn.location_encoder import LocationEncoderConfig

    return LocationEncoderConfig


@dataclass
class ModelSection:
    """The `model:` section. Its fields named as GeoCLIPConfig's are that config's fields (same
    names, types and meaning), passed on by name (`model_config`, `weights_overrides`), so a field
    is declared here once and never copied by hand; location_encoder and image_head are
    overrides of their configs. The others are training-only: init, architecture, what trains,
    queue_mode."""

    init: str = "official"  # "official", "scratch", or a geoalign checkpoint folder
    architecture: Literal["released", "paper"] = "released"  # 3 or 4 hidden layers per scale
    location_encoder: dict[str, Any] = field(default_factory=dict)  # LocationEncoderConfig fields
    image_head: dict[str, Any] = field(default_factory=dict)  # ImageHeadConfig fields
    queue_size: int = 4096
    queue_init: Literal["sphere", "latlon"] = "sphere"
    temperature_init: float = 0.07
    learn_temperature: bool = True
    train_location_encoder: bool = True
    train_image_head: bool = True
    # How queue embeddings are made each step. "published": the queue's (noisy) coordinates go
    # through the location encoder with gradients, as in GeoCLIP. "detached": the same without
    # gradients (about 2x less location-encoder work). "cached": each coordinate's embedding is
    # kept from the step it entered the queue (a memory bank, MoCo-style: no re-encoding, no
    # gradient, embeddings up to queue/batch steps old) -- fastest, and a deviation from the paper.
    queue_mode: Literal["published", "detached", "cached"] = "published"
    features: str | None = None  # the features the image head reads (backbone spec)

    RULES: ClassVar[dict[str, Rule]] = {
        "location_encoder": keys_of(_location_encoder_config),
        "image_head": keys_of(_image_head_config),
        "queue_size": at_least(0, 4096),
        "temperature_init": above(0, 0.07),
    }
    # built from their override mappings (location_encoder, image_head), not passed on as they are
    BUILT: ClassVar[frozenset[str]] = frozenset({"location_encoder", "image_head"})
    # what a start from weights keeps from the checkpoint (the features: unless set here)
    FROM_WEIGHTS: ClassVar[frozenset[str]] = frozenset({"temperature_init", "features"})

    def _shared(self) -> dict[str, Any]:
        from geoalign.models.geoclip import GeoCLIPConfig

        names = {f.name for f in fields(GeoCLIPConfig)} & {f.name for f in fields(self)}
        return {name: getattr(self, name) for name in names - self.BUILT}

    def model_config(self, seed: int, location_encoder: Any, image_head: Any) -> Any:
        """The GeoCLIPConfig of a run from scratch: the shared fields by name, the built
        location encoder and image head configs, and the run's seed (queue initialisation)."""
        from geoalign.models.geoclip import GeoCLIPConfig

        return GeoCLIPConfig(
            **self._shared(), location_encoder=location_encoder, image_head=image_head, seed=seed
        )

    def weights_overrides(self, seed: int) -> dict[str, Any]:
        """The GeoCLIPConfig fields a start from weights (official or a checkpoint) takes from
        the section: the shared fields but the temperature and features the weights come with."""
        shared = self._shared()
        return {k: v for k, v in shared.items() if k not in self.FROM_WEIGHTS} | {"seed": seed}


@dataclass
class DataSection:
    """Where the training rows come from. P augmented views per image (`views`) come from photos
    (`source: images` or `wds`, augmented as they are read) or from a store of K >= P SimCLR views per
    image (`geoalign features extract --views K --augment simclr`), which draws P of the K per
    image per step; such a store costs K times the extraction time and disk of a single-view
    store (MP-16 with CLIP ViT-L/14 in float16: about 7.2 GB per view)."""

    source: Literal["arrays", "store", "images", "wds", "scene-labels"] = "store"
    path: str | None = None  # feature store, manifest, scene-label CSV/benchmark, or wds shards
    images_root: str | None = None  # for source=images: folder the manifest's paths are under
    backbone: str = "clip-vit-l14"  # for source=images and wds
    fraction: float = 1.0  # limited-data training: this share of the rows, fixed by fraction_seed
    fraction_seed: int = 0
    views: int = 1  # P augmented views per image (images, wds; a store of K >= P views: --views K)
    gps_noise_m: float = 150.0  # σ_η on batch coordinates
    queue_noise_m: float = 1000.0  # σ_η' on queue coordinates
    num_workers: int = 2
    read_rows: int = 65536  # store streaming: rows read per chunk (memory ~ 2 shards + this)
    # For photos (images, wds). gpu: the workers only read bytes; the training process decodes
    # them with nvJPEG on its GPU and applies the views transform there (needs CUDA training).
    decode: Literal["cpu", "gpu"] = "cpu"  # photo decoding: cpu (Pillow, workers) or gpu (nvJPEG)

    RULES: ClassVar[dict[str, Rule]] = {
        "fraction": share,
        "views": at_least(1),
        "gps_noise_m": at_least(0, 150.0),
        "queue_noise_m": at_least(0, 1000.0),
        "num_workers": at_least(0),
        "read_rows": at_least(1),
    }


@dataclass
class OptimSection:
    lr: float = 3e-5
    weight_decay: float = 1e-6
    gamma: float = 0.87  # StepLR, one step per epoch
    batch_size: int = 512  # global batch (split across processes under DDP)
    epochs: int = 10
    max_steps: int = -1

    RULES: ClassVar[dict[str, Rule]] = {
        "lr": at_least(0, 3e-5),
        "weight_decay": at_least(0, 1e-6),
        "gamma": above(0, 0.87),
        "batch_size": at_least(1, 512),
        "epochs": at_least(1, 10),
        "max_steps": steps_limit,
    }


@dataclass
class TrainerSection:
    out_dir: str = "runs/geoclip"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "32-true"
    seed: int = 0
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 20
    resume: str | None = "auto"  # "auto": last.ckpt in out_dir if present; a path; or null
    progress: bool = True

    RULES: ClassVar[dict[str, Rule]] = {
        "num_nodes": at_least(1),
        "checkpoint_every_n_steps": at_least(1, 500),
        "log_every_n_steps": at_least(1, 20),
    }


@dataclass
class EvalSection:
    # The test set's name in reports (published rows are shown only beside the benchmark they
    # report). None: the data set's own name (the eval.queries store's folder name; Im2GPS3k's
    # scene labels for a scene-label run with no eval.queries).
    benchmark: str | None = None
    gallery: str = "geoclip-100k"  # a named gallery, a file, or "train:N" (N training coords)
    modes: list[str] = field(default_factory=lambda: ["top1", "mode"])
    radius_km: float = 750.0  # mode-seeking radius
    ten_crop: bool = False
    # Test features for the evaluation `geoalign train` runs when training ends: a feature store
    # folder or scene-labels:<benchmark or CSV>. None: scene labels of `benchmark` when training
    # on scene labels, otherwise no evaluation (run `geoalign evaluate` on the photos instead).
    queries: str | None = None
    images: str | None = None  # benchmark photo folder, manifest or shards: evaluate from photos
    after_training: bool = True
    baselines: bool = True  # beside the model, on the training features (at most 200,000 rows)

    RULES: ClassVar[dict[str, Rule]] = {"radius_km": above(0, 750.0)}


@dataclass
class TrainConfig:
    name: str = "geoclip"
    reproduces: str = "none"  # e.g. "GeoCLIP (NeurIPS 2023) Table 1(a), Im2GPS3k"
    notes: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Validate (and lightly coerce) a YAML value against a type hint; returns the value."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in get_args(hint):
            raise DataError(f"{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin in (list, dict):
        expected = origin
        if not isinstance(value, expected):
            raise DataError(f"{where}: expected a {expected.__name__}, got {value!r}")
        return value
    args = get_args(hint)
    if args:  # a union such as `str | None` or `int | str`
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where)
            except DataError:
                continue
        raise DataError(f"{where}: {value!r} does not fit {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 3e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise DataError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _check_value(value, hint, f"{where}.{key}")
            rule = getattr(cls, "RULES", {}).get(key)
            problem = rule(kwargs[key]) if rule is not None else None
            if problem and isinstance(value, dict):
                raise DataError(f"{where}.{key}: {problem}")
            if problem:
                raise DataError(f"{where}.{key}: {kwargs[key]!r} is not allowed: {problem}")
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise DataError(f"override {item!r}: expected key.path=value")
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DataError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def config_from_dict(
    data: dict[str, Any], *, source: str = "config", overrides: list[str] | None = None
) -> TrainConfig:
    data = apply_overrides(dict(data or {}), overrides)
    return _build(TrainConfig, data, source)


def config_method(path: str | Path) -> str:
    """The method a training YAML trains (its `method:`, else "geoclip"): how `geoalign train`
    dispatches, read once here rather than sniffed by each method."""
    return str(read_config_yaml(path).get("method") or "geoclip")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (see configs/geoclip/) and apply `key.path=value` overrides."""
    return config_from_dict(read_config_yaml(path), source=str(path), overrides=overrides)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


# --- configs shipped in the package ------------------------------------------------------------


def packaged_configs() -> Path:
    """The configs shipped inside the package (`geoalign/configs/`; the repository's configs/ is
    the same folder), so an installed geoalign finds them from any working directory."""
    from importlib import resources

    return Path(str(resources.files("geoalign").joinpath("configs")))


def resolve_config(path: str | Path) -> Path:
    """`path` when that file exists; else the packaged config it names: `configs/geoclip/
    quickstart.yaml`, `geoclip/quickstart.yaml` or `geoclip/quickstart` all name the shipped one."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = packaged_configs().joinpath(*parts)
    if shipped.suffix != ".yaml":
        shipped = shipped.with_name(shipped.name + ".yaml")
    return shipped if parts and shipped.is_file() else path


# --- `base:` inheritance (GeoSURGE and concept-aware configs) ----------------------------------


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DataError(
                    f"{self.name}: line {line}: key {key!r} appears twice in one mapping "
                    "(YAML keeps only the last one): remove one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; `base: other.yaml` (relative to the file) is read first and
    deep-merged under it, so an ablation file states only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise DataError(f"{path}: `base` chain loops back to itself")
    try:
        with path.open() as file:
            data = yaml.load(file, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {err}") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a mapping of sections (model:, data:, optim:, ...) at the top "
            f"level, got a {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None:
        return data
    parent = read_config_yaml(path.parent / str(base), (*_seen, path.resolve()))
    return _merge(parent, data)


# --- where a run's processes go (GeoCLIP, concept-aware and GeoSURGE trainers) ---------------------


@dataclass
class Placement:
    accelerator: str  # "cpu" or "gpu" ("auto" resolved)
    devices: int | str  # processes per node
    num_nodes: int
    strategy: Any  # "auto" (one process) or a DDPStrategy


def world_from_env() -> tuple[int | None, int | None]:
    """(processes per node, nodes) under torchrun, else (None, None)."""
    import os

    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        return local, max(1, int(os.environ["WORLD_SIZE"]) // max(local, 1))
    return None, None


def trainer_placement(t: TrainerSection) -> Placement:
    """The Lightning placement of a run: torchrun's world when it started us, else
    `trainer.devices` x `trainer.num_nodes`. Several processes use DDP over NCCL on GPUs and gloo
    on CPUs, without the unused-parameter search (every trained parameter gets a gradient)."""
    import torch

    local, nodes = world_from_env()
    devices: int | str = local if local is not None else t.devices
    num_nodes = nodes if nodes is not None else t.num_nodes
    n_proc = (devices if isinstance(devices, int) else 1) * num_nodes
    accelerator = t.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    strategy: Any = "auto"
    if n_proc > 1 or devices == "auto":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(
            process_group_backend="nccl" if accelerator == "gpu" else "gloo",
            find_unused_parameters=False,
        )
    return Placement(accelerator, devices, num_nodes, strategy)
