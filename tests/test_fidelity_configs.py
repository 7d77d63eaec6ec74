"""Every shipped config parses, names the table it reproduces (or says why none), and holds no key
the typed config lacks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from geoalign.training.config import load_config, packaged_configs, read_config_yaml

SHIPPED = sorted(packaged_configs().rglob("*.yaml"))
TABLE = re.compile(r"\b(Table|Tables|Figure) [0-9IVX]")


def typed(path: Path) -> tuple[str, dict]:
    """(reproduces, the typed config as a dict) through the loader `geoalign train` uses."""
    from geoalign.training.concept import load_concept_config
    from geoalign.training.config import config_method
    from geoalign.training.geosurge import load_geosurge_config

    method = config_method(path)
    assert method == path.parent.name  # configs/<method>/*.yaml
    if method == "geosurge":
        cfg = load_geosurge_config(path)
        return cfg.reproduces, cfg.to_dict()
    if method == "concept":
        run = load_concept_config(path)
        own = {"method": "concept", "concept": run.concept.to_dict()}
        return run.train.reproduces, {
            **run.train.to_dict(), **own, "cbm": dataclasses.asdict(run.cbm)
        }  # fmt: skip
    cfg = load_config(path)
    return cfg.reproduces, cfg.to_dict()


def unknown_keys(raw: dict, known: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        if key not in known:
            out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(known[key], dict):
            out += unknown_keys(value, known[key], f"{prefix}{key}.")
    return out


def test_the_shipped_configs_are_all_found():
    names = {p.relative_to(packaged_configs()).as_posix() for p in SHIPPED}
    assert {"concept/mp16_5pct.yaml", "geoclip/mp16.yaml", "geosurge/mp16.yaml"} <= names
    assert len(SHIPPED) >= 30


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_parses_names_a_table_and_has_no_unread_key(path):
    reproduces, known = typed(path)
    assert TABLE.search(reproduces) or reproduces.startswith("none ("), reproduces
    assert unknown_keys(read_config_yaml(path), known) == []


def test_the_two_concept_regimes_name_their_rows():
    root = packaged_configs() / "concept"
    five = {p.stem: typed(p) for p in root.glob("mp16_5pct*.yaml")}
    assert set(five) == {"mp16_5pct", "mp16_5pct_without_module", "mp16_5pct_general_concepts"}
    for _, cfg in five.values():
        assert cfg["data"]["fraction"] == 0.05 and cfg["optim"]["batch_size"] == 128
    assert "13.2 / 34.0 / 49.8 / 68.2 / 83.5" in five["mp16_5pct"][0]
    assert "10.8 / 31.1 / 48.7 / 67.6 / 83.2" in five["mp16_5pct_without_module"][0]
    assert five["mp16_5pct_without_module"][1]["concept"]["lambda_concept"] == 0.0
    assert "Table 4" in five["mp16_5pct_general_concepts"][0]
    for stem in ("mp16", "mp16_without_module", "mp16_general_concepts"):
        reproduces, cfg = typed(root / f"{stem}.yaml")  # 100%: no published concept-aware row
        assert cfg["data"]["fraction"] == 1.0 and reproduces.startswith("none (")


def test_an_unknown_key_is_refused(tmp_path):
    from geoalign.errors import DataError

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"eval": {"ten_crops": True}}))
    with pytest.raises(DataError, match="ten_crops"):
        load_config(path)


def test_the_readme_states_the_quickstart_geosurge_hierarchy_it_runs():
    from geoalign.training.geosurge import load_geosurge_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quickstart = readme.split("## The quickstart", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in quickstart.splitlines() if x.startswith("- **GeoSURGE**"))
    cells = load_geosurge_config(packaged_configs() / "geosurge" / "scene_labels.yaml").cells
    levels = re.search(r"(\d+)-level", line)
    assert levels and int(levels.group(1)) == len(cells.tau_max), line
    assert " / ".join(f"{t:g}" for t in cells.tau_max) in line


def test_no_concept_or_geosurge_config_claims_as_published_without_saying_what_differs():
    for path in [
        *packaged_configs().glob("concept/*.yaml"),
        *packaged_configs().glob("geosurge/*.yaml"),
    ]:
        text = path.read_text()
        if "as published" in text.lower():
            assert re.search(r"not as published|can differ|not, as published", text, re.I), path


def test_the_lambda_claim_of_the_concept_config_is_the_committed_reports():
    """configs/concept/mp16.yaml says λ = 1 does not lift top-1 at every threshold on the
    quickstart, citing reports/quickstart/report.md: the report's rows must say so, and the
    config must quote no numbers of its own that could drift from it."""
    root = Path(__file__).resolve().parents[1]
    text = (packaged_configs() / "concept" / "mp16.yaml").read_text()
    claim = text.split("λ and σ", 1)[1].split("\n# Regime", 1)[0]
    assert "reports/quickstart/report.md" in claim and "not lift top-1" in claim
    assert not re.search(r"\d+\.\d", claim), claim  # no numbers copied from a report
    report = (root / "reports" / "quickstart" / "report.md").read_text()

    def top1(method: str) -> list[float]:
        line = next(x for x in report.splitlines() if x.startswith(f"| **{method} (top-1)** |"))
        return [float(c) for c in line.split("|")[2:7]]

    geoclip, concept = top1("GeoCLIP alignment"), top1("Concept-aware alignment")
    assert any(c < g for c, g in zip(concept, geoclip, strict=True)), (concept, geoclip)


def test_concept_configs_train_on_the_simclr_views_store_as_geoclip_tables_2_and_3():
    geoclip = load_config(packaged_configs() / "geoclip" / "limited_5.yaml").data
    for path in sorted((packaged_configs() / "concept").glob("mp16*.yaml")):
        _, cfg = typed(path)
        assert cfg["data"]["path"] == geoclip.path and cfg["data"]["views"] == geoclip.views, path
