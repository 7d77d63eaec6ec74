"""Configs: every file under configs/geoclip loads, names its paper table, and builds its model."""

from pathlib import Path

import pytest
import yaml

from geoalign.errors import DataError
from geoalign.training.config import config_from_dict, load_config
from geoalign.training.run import build_model

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "geoclip").glob("*.yaml"))


def test_there_is_a_config_per_paper_run():
    names = {p.stem for p in CONFIGS}
    assert {
        "mp16",
        "limited_20",
        "limited_10",
        "limited_5",
        "ablation_mlp",
        "ablation_eep",
    } <= names
    assert {
        "ablation_eep_rff",
        "ablation_eep_rff_dq",
        "sigma_coarse",
        "sigma_fine",
        "sigma_hierarchy",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_names_its_table(path):
    cfg = load_config(path)
    assert cfg.reproduces
    if cfg.reproduces != "none" and not cfg.reproduces.startswith("none "):
        assert "GeoCLIP (NeurIPS 2023)" in cfg.reproduces and "Table" in cfg.reproduces
    assert cfg.optim.lr > 0 and cfg.optim.batch_size > 0


@pytest.mark.parametrize(
    "stem, sigmas, fourier, projection, queue",
    [
        ("ablation_mlp", (1.0,), False, "none", 0),
        ("ablation_eep", (1.0,), False, "equal_earth", 0),
        ("ablation_eep_rff", (16.0,), True, "equal_earth", 0),
        ("ablation_eep_rff_dq", (16.0,), True, "equal_earth", 4096),
        ("sigma_fine", (256.0,), True, "equal_earth", 4096),
        ("sigma_hierarchy", (1.0, 16.0, 256.0), True, "equal_earth", 4096),
        ("mp16", (1.0, 16.0, 256.0), True, "equal_earth", 4096),
    ],
)
def test_ablation_configs_build_the_table_3_encoders(stem, sigmas, fourier, projection, queue):
    cfg = load_config(CONFIGS[[p.stem for p in CONFIGS].index(stem)])
    model = build_model(cfg, feature_dim=768)
    enc = model.location_encoder.config
    assert enc.resolved_sigmas == sigmas
    assert enc.fourier is fourier and enc.projection == projection
    assert len(model.queue) == queue
    assert model.config.temperature_init == pytest.approx(0.07)


def test_limited_data_configs_follow_the_paper():
    got = {}
    for p in CONFIGS:
        if p.stem.startswith("limited_"):
            cfg = load_config(p)
            got[cfg.data.fraction] = cfg.optim.batch_size
    assert got == {0.2: 256, 0.1: 256, 0.05: 128}


def test_unknown_keys_and_bad_values_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optim": {"learning_rate": 1e-3}}))
    with pytest.raises(DataError, match=r"bad\.yaml\.optim: unknown key.*learning_rate"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"data": {"source": "tarballs"}}))
    with pytest.raises(DataError, match=r"data\.source: 'tarballs' is not one of"):
        load_config(bad)
    with pytest.raises(DataError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_and_yaml_number_forms():
    cfg = config_from_dict(
        {"optim": {"lr": "3e-5"}}, overrides=["optim.batch_size=64", "model.init=scratch"]
    )
    assert (
        cfg.optim.lr == pytest.approx(3e-5)
        and cfg.optim.batch_size == 64
        and cfg.model.init == "scratch"
    )
    with pytest.raises(DataError, match="expected key.path=value"):
        config_from_dict({}, overrides=["optim.lr"])
