"""The configs ship in the package (geoalign/configs/) and the quickstarts read them: the YAML is
the only copy of their settings."""

import tomllib
from pathlib import Path

import yaml

from geoalign.training.config import packaged_configs, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def test_repository_configs_are_the_packaged_files():
    assert (ROOT / "configs").resolve() == packaged_configs().resolve()
    assert (packaged_configs() / "geoclip" / "quickstart.yaml").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "configs/**/*.yaml" in data["tool"]["setuptools"]["package-data"]["geoalign"]


def test_a_config_name_finds_the_packaged_file_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = packaged_configs() / "geoclip" / "quickstart.yaml"
    for name in (
        "configs/geoclip/quickstart.yaml",
        "geoclip/quickstart.yaml",
        "geoclip/quickstart",
    ):
        assert resolve_config(name) == shipped
    (tmp_path / "configs" / "geoclip").mkdir(parents=True)
    own = tmp_path / "configs" / "geoclip" / "quickstart.yaml"
    own.write_text("name: mine\n")
    assert resolve_config("configs/geoclip/quickstart.yaml") == Path(
        "configs/geoclip/quickstart.yaml"
    )
    assert resolve_config("nope/missing.yaml") == Path("nope/missing.yaml")  # reported later


def _shipped_copy(tmp_path, monkeypatch, edit):
    """Packaged configs copied to tmp_path with `edit(relpath, data)` applied; the package points
    there."""
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(packaged_configs(), root)
    for rel, change in edit.items():
        data = yaml.safe_load((root / rel).read_text())
        for section, values in change.items():
            data.setdefault(section, {}).update(values)
        (root / rel).write_text(yaml.safe_dump(data))
    monkeypatch.setattr("geoalign.training.config.packaged_configs", lambda: root)


def test_every_quickstart_reads_the_packaged_yaml(tmp_path, monkeypatch):
    from geoalign.training.concept import quickstart_run
    from geoalign.training.geosurge import quickstart_geosurge_config
    from geoalign.training.quickstart import quickstart_config

    _shipped_copy(
        tmp_path,
        monkeypatch,
        {
            "geoclip/quickstart.yaml": {"optim": {"lr": 0.0123}},
            "geosurge/scene_labels.yaml": {"optim": {"lr": 0.0456}},
            "concept/quickstart.yaml": {"concept": {"lambda_concept": 0.25}},
        },
    )
    cfg = quickstart_config(tmp_path / "out")
    assert cfg.optim.lr == 0.0123 and cfg.trainer.resume is None
    assert cfg.trainer.out_dir == str(tmp_path / "out" / "run")
    gs = quickstart_geosurge_config(tmp_path / "gs", seed=2)
    assert gs.optim.lr == 0.0456 and gs.data.source == "arrays" and gs.trainer.seed == 2
    run = quickstart_run(cfg, tmp_path / "c")
    assert run.concept.lambda_concept == 0.25 and run.train.optim.lr == 0.0123
