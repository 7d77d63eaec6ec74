"""Checkpoints are verified at load: the sha256 recorded at save, finite tensors, and a config.json
edited to disagree with the weights is a clear error (through the registry, for every method)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from geoalign.errors import GeoalignError, WeightsNotFoundError
from geoalign.models.checkpoint import SHA256_KEY, file_sha256, save_checkpoint
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.models.registry import load_checkpoint, load_model
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def _tiny_geoclip() -> GeoCLIP:
    torch.manual_seed(0)
    return GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
            ),
            image_head=ImageHeadConfig(in_dim=24, hidden_dim=32, out_dim=16),
            queue_size=32,
        )
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint of each method, saved once for the module."""
    from geoalign.data.concept_sets import load_concept_set
    from geoalign.geo.cells import CellHierarchy, PartitionRules
    from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
    from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig

    root = tmp_path_factory.mktemp("ckpts")
    _tiny_geoclip().save(root / "geoclip")
    concept = ConceptAwareGeoCLIP.from_geoclip(
        _tiny_geoclip(),
        ConceptConfig(k=10, head_hidden=(32,), top_k=5),
        load_concept_set("geography").select(10),
        torch.randn(10, 24, generator=torch.Generator().manual_seed(1)),
        text_kind="clip",
    )
    concept.save(root / "concept")
    pts = np.random.default_rng(0).uniform([-55, -170], [65, 170], size=(500, 2))
    cells = CellHierarchy.build(
        pts[:, 0], pts[:, 1], tau_max=(1200, 400), rules=PartitionRules(tau_min=15)
    )
    cfg = GeoSurgeConfig(
        level_sizes=tuple(cells.sizes), embed_dim=16, feature_dim=8, feature_head="linear"
    )
    GeoSurge(cfg, cells).save(root / "geosurge")
    return {"geoclip": root / "geoclip", "concept": root / "concept", "geosurge": root / "geosurge"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tensor_offset(path: Path, name: str) -> int:
    """Byte offset of a tensor's data in a safetensors file (8-byte header length, JSON, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return 8 + n + header[name]["data_offsets"][0]


def _poke_nan(path: Path, name: str) -> None:
    """Same-size damage: the first float32 of `name` becomes a NaN (file length unchanged)."""
    offset = _tensor_offset(path, name)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack("<f", float("nan")))


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_save_records_the_weights_sha256(saved):
    for folder in saved.values():
        config = json.loads((folder / "config.json").read_text())
        assert config[SHA256_KEY] == file_sha256(folder / "model.safetensors")
        load_model(folder)  # and it verifies


def test_same_size_damage_fails_the_sha256_naming_the_file(saved, tmp_path):
    folder = _copy(saved["geoclip"], tmp_path / "m")
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    _poke_nan(weights, "image_head.net.0.weight")
    assert weights.stat().st_size == size
    with pytest.raises(WeightsNotFoundError, match="damaged") as err:
        load_model(folder)
    assert str(weights) in str(err.value) and "retrain or re-export" in str(err.value)


def test_a_nan_tensor_is_an_error_naming_it_even_without_a_recorded_sha256(saved, tmp_path):
    # an old checkpoint (no sha256) damaged in place: the finite check still catches it
    folder = _copy(saved["geoclip"], tmp_path / "m")
    _edit_config(folder, lambda c: c.pop(SHA256_KEY))
    _poke_nan(folder / "model.safetensors", "location_encoder.branches.0.head.weight")
    with pytest.raises(WeightsNotFoundError, match="location_encoder.branches.0.head.weight"):
        load_model(folder)


def test_nan_weights_saved_as_such_are_refused_at_load(tmp_path):
    # the sha256 matches (the file is what was written) but the values are not usable
    model = _tiny_geoclip()
    state = model.checkpoint_state()
    state["logit_scale"] = torch.tensor(float("inf"))
    config = json.loads(json.dumps({"method": "geoclip", **_config_of(model)}))
    save_checkpoint(tmp_path / "m", state, config)
    with pytest.raises(WeightsNotFoundError, match="'logit_scale' holds 1 NaN/inf"):
        load_checkpoint(tmp_path / "m")


def _config_of(model: GeoCLIP) -> dict:
    """The config.json a GeoCLIP save writes, without writing (via a throwaway save)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d))
        config = json.loads((Path(d) / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in {"format", "format_version", SHA256_KEY}}


def test_an_old_checkpoint_without_a_sha256_still_loads(saved, tmp_path):
    folder = _copy(saved["geoclip"], tmp_path / "m")
    _edit_config(folder, lambda c: c.pop(SHA256_KEY))
    assert isinstance(load_model(folder), GeoCLIP)


def test_truncated_weights_are_a_clear_error(saved, tmp_path):
    folder = _copy(saved["geoclip"], tmp_path / "m")
    _edit_config(folder, lambda c: c.pop(SHA256_KEY))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(WeightsNotFoundError, match="damaged checkpoint weights"):
        load_model(folder)


def test_a_resave_records_the_new_sha256(saved, tmp_path):
    # a config passed back in with a stale sha256 (e.g. read, edited, saved) gets the new one
    folder = tmp_path / "m"
    model = _tiny_geoclip()
    config = {**_config_of(model), SHA256_KEY: "0" * 64}
    save_checkpoint(folder, model.checkpoint_state(), config)
    load_model(folder)


EDITS_THAT_LOAD_CLEANLY_OR_FAIL_CLEARLY = [
    ("geoclip", "location_encoder embed_dim", lambda c: c["location_encoder"].update(embed_dim=8)),
    ("geoclip", "method geosurge", lambda c: c.update(method="geosurge")),
    ("geoclip", "method concept", lambda c: c.update(method="concept")),
    ("geoclip", "method unknown", lambda c: c.update(method="nope")),
    ("concept", "image_head out_dim", lambda c: c["image_head"].update(out_dim=8)),
    ("concept", "method geosurge", lambda c: c.update(method="geosurge")),
    ("geosurge", "level_sizes", lambda c: c["geosurge"].update(level_sizes=[6, 7])),
]

EDITS_THAT_TRACEBACK_TODAY = [
    (
        "concept",
        "concept head_hidden",
        lambda c: c["concept"]["config"].update(head_hidden=[16]),
        "models/geoclip.py from_checkpoint: _load_extra_state runs outside the try that turns "
        "load_state_dict RuntimeErrors into WeightsNotFoundError",
    ),
    (
        "geosurge",
        "geosurge embed_dim",
        lambda c: c["geosurge"].update(embed_dim=8),
        "models/geosurge.py load_checkpoint_state: load_state_dict size mismatch is a RuntimeError",
    ),
    (
        "geosurge",
        "geosurge feature_dim",
        lambda c: c["geosurge"].update(feature_dim=4),
        "models/geosurge.py load_checkpoint_state: load_state_dict size mismatch is a RuntimeError",
    ),
    (
        "geosurge",
        "method geoclip",
        lambda c: c.update(method="geoclip"),
        "models/geoclip.py config_from_checkpoint: cfg['location_encoder'] is a KeyError",
    ),
    (
        "geoclip",
        "no image_head section",
        lambda c: c.pop("image_head"),
        "models/geoclip.py config_from_checkpoint: cfg['image_head'] is a KeyError",
    ),
]


# Edits that were tracebacks before models/geoclip.py and models/geosurge.py wrapped them.
EDITED_CONFIGS = EDITS_THAT_LOAD_CLEANLY_OR_FAIL_CLEARLY + [
    e[:3] for e in EDITS_THAT_TRACEBACK_TODAY
]


@pytest.mark.parametrize("method,what,edit", EDITED_CONFIGS, ids=[e[1] for e in EDITED_CONFIGS])
def test_an_edited_config_fails_clearly(saved, tmp_path, method, what, edit):
    folder = _copy(saved[method], tmp_path / "m")
    _edit_config(folder, edit)
    with pytest.raises(GeoalignError):
        load_model(folder)


def test_the_official_conversion_records_its_sha256():
    pytest.importorskip("geoclip")
    from geoalign.models.registry import checkpoint_config, resolve_checkpoint_dir

    folder = resolve_checkpoint_dir("geoclip")  # converted into the tests' private cache
    recorded = checkpoint_config("geoclip")[SHA256_KEY]
    assert recorded == file_sha256(folder / "model.safetensors")
