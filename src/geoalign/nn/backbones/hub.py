"""Where pretrained weights are looked for, and the error that says so when they are not found."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from geoalign.errors import WeightsNotFoundError

_TRUE = {"1", "on", "yes", "true"}


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment NOW.

    Hand-written because `huggingface_hub.constants.HF_HUB_CACHE` is frozen when that module is
    first imported; we pass this folder to `from_pretrained(cache_dir=...)`, so the folder we search
    and the folder we name in errors are always the same.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # legacy name, still honoured by huggingface_hub
        return Path(os.path.expandvars(os.environ["HUGGINGFACE_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline_mode(local_files_only: bool | None = None) -> bool:
    """Explicit argument wins; otherwise HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE decide."""
    if local_files_only is not None:
        return local_files_only
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((flag or "").strip().lower() in _TRUE for flag in flags)


def hf_repo_cache_folder(repo_id: str) -> Path:
    return hf_hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def torch_checkpoints_dir() -> Path:
    """torch.hub's download folder ($TORCH_HOME/hub/checkpoints, read at call time)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def looks_like_path(text: str) -> bool:
    """A local path rather than a hub repo id ("org/name" has exactly one slash and no dots first)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")  # Windows drive
        or Path(text).expanduser().exists()
    )


def missing_weights(
    what: str, looked_in: Sequence[str], fixes: Sequence[str], cause: BaseException | None = None
) -> WeightsNotFoundError:
    """Build the error users see: what was wanted, every place searched, every way to fix it."""
    lines = [f"Could not load {what}.", "Looked in:"]
    lines += [f"  - {place}" for place in looked_in]
    lines.append("To fix, do one of:")
    lines += [f"  - {fix}" for fix in fixes]
    if cause is not None:
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        lines.append(f"(underlying error: {type(cause).__name__}: {reason})")
    return WeightsNotFoundError("\n".join(lines))


def weights_file_not_found(
    library: str, model_name: str, path: Path, example: str
) -> WeightsNotFoundError:
    """The weights file named in a `library:model@file` spec does not exist."""
    return missing_weights(
        f"{library} weights file for {model_name}",
        [f"{path} (no such file)"],
        [f"pass an existing file: {library}:{model_name}@/path/to/{example}"],
    )


@dataclass(frozen=True)
class CheckpointKind:
    """How errors describe one kind of Hugging Face checkpoint (a CLIP tower, a segmenter...)."""

    what: str  # "CLIP weights": the thing that could not be loaded
    files: str  # what a local folder must hold
    local_spec: str  # how to pass a local folder, with {path}: "backbone spec `hf:{path}`"
    example_repo: str  # the repo named in download advice when a local path was asked for
    path_env: Mapping[str, str]  # repo id -> env var naming a local folder to use instead
    other_fixes: tuple[str, ...] = ()  # ways round it without these weights (another model)


@dataclass(frozen=True)
class HfCheckpoint:
    """Where one `from_pretrained` call looks: decided once, so that the places searched and the
    places a `WeightsNotFoundError` names are always the same."""

    kind: CheckpointKind
    requested: str  # the repo id or path asked for
    source: str  # what is loaded: that repo id, or a local folder (maybe from env_var)
    env_var: str | None  # the variable that can point `requested` at a local folder
    from_env: bool  # `source` came from env_var
    is_local: bool
    offline: bool
    cache_dir: Path

    @property
    def load_kwargs(self) -> dict[str, object]:
        """The `from_pretrained` arguments that make it search exactly here."""
        return {"local_files_only": self.offline, "cache_dir": self.cache_dir}


def resolve_checkpoint(
    name_or_path: str | os.PathLike, kind: CheckpointKind, local_files_only: bool | None = None
) -> HfCheckpoint:
    """Decide where to load `name_or_path` from; a local folder that does not exist is an error
    now (WeightsNotFoundError), not an obscure one from transformers later.

    For known repo ids, the folder named by the kind's environment variable (when set) wins over
    the Hugging Face cache.
    """
    requested = str(name_or_path)
    env_var = kind.path_env.get(requested)
    from_env = bool(env_var and os.environ.get(env_var))
    source = os.environ[env_var] if from_env and env_var else requested
    is_local = from_env or looks_like_path(source)
    ckpt = HfCheckpoint(
        kind=kind,
        requested=requested,
        source=str(Path(source).expanduser()) if is_local else source,
        env_var=env_var,
        from_env=from_env,
        is_local=is_local,
        offline=offline_mode(local_files_only),
        cache_dir=hf_hub_cache_dir(),
    )
    if is_local and not Path(ckpt.source).is_dir():
        raise hf_weights_not_found(ckpt)
    return ckpt


def hf_weights_not_found(
    ckpt: HfCheckpoint, cause: BaseException | None = None
) -> WeightsNotFoundError:
    """The one message for absent Hugging Face weights: the model id, every place searched (the
    local folder, or the hub cache folder and the environment variable) and every way to provide
    the weights (download and copy the cache, a local folder, the variable, going online)."""
    kind = ckpt.kind
    folder = "" if not ckpt.is_local or Path(ckpt.source).is_dir() else " (no such folder)"
    if ckpt.from_env:
        looked = [f"{ckpt.env_var}={ckpt.source}{folder}"]
    elif ckpt.is_local:
        looked = [f"local folder {ckpt.source}{folder}"]
    else:
        looked = [
            f"Hugging Face cache {ckpt.cache_dir} (folder {hf_repo_cache_folder(ckpt.source).name})"
            + (" — offline (HF_HUB_OFFLINE), no download tried" if ckpt.offline else ""),
            *(["the hub (download failed)"] if not ckpt.offline else []),
        ]
    if ckpt.env_var and not ckpt.from_env:
        looked.append(f"${ckpt.env_var} (not set)")

    repo = ckpt.requested if not looks_like_path(ckpt.requested) else kind.example_repo
    example = f"/path/to/{repo.split('/')[-1]}"
    if ckpt.from_env:
        fixes = [
            f"point {ckpt.env_var} at a folder holding {kind.files}",
            f"or unset {ckpt.env_var} to use the Hugging Face cache ({ckpt.cache_dir})",
        ]
    else:
        fixes = [
            f"on a machine with internet: `huggingface-cli download {repo}` (or `hf download "
            f"{repo}`), then copy the cache folder here and set HF_HUB_CACHE (or HF_HOME) to it",
            f"pass a local folder holding {kind.files}: " + kind.local_spec.format(path=example),
        ]
        if ckpt.env_var:
            fixes.append(f"set {ckpt.env_var}={example}")
        if ckpt.offline:
            fixes.append(
                "if this machine has internet, unset HF_HUB_OFFLINE so the weights download"
            )
    fixes += kind.other_fixes
    return missing_weights(f"{kind.what} {ckpt.requested!r}", looked, fixes, cause)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (it lists every skipped text-tower weight) and progress."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def read_preprocessor_config(ckpt: HfCheckpoint) -> dict | None:
    """A checkpoint's preprocessor_config.json as a dict, or None when absent or unreachable."""
    try:
        if ckpt.is_local:
            path = Path(ckpt.source) / "preprocessor_config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(
                    ckpt.source,
                    "preprocessor_config.json",
                    cache_dir=ckpt.cache_dir,
                    local_files_only=ckpt.offline,
                )
            )
        return json.loads(path.read_text())
    except Exception:  # absent or unreachable: callers fall back to published defaults
        return None
