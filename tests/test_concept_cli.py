"""The commands of the concept-aware alignment issue, as a user types them, through the CLI with a
tiny model trained by `geoalign train` on the packaged scene labels (offline, no real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from geoalign.cli.app import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "concept"


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, gallery CSV): `geoalign train` on a concept config, Im2GPS's 237 photos."""
    tmp = tmp_path_factory.mktemp("concept-cli")
    config = {
        "method": "concept",
        "name": "tiny-concept",
        "reproduces": "none (test)",
        "model": {
            "init": "scratch",
            "queue_size": 32,
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 16,
            },
            "image_head": {"hidden_dim": 16, "out_dim": 16},
            "features": "places365-scene-labels",
        },
        "data": {"source": "scene-labels", "path": "im2gps"},
        "optim": {"batch_size": 64, "epochs": 2},
        "trainer": {"progress": False, "log_every_n_steps": 1},
        "concept": {"text_encoder": "tiny:16", "head_hidden": [16], "top_k": 8},
        "cbm": {"min_per_class": 5, "target_nonzero": 5},
    }
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    r = invoke("train", tmp / "tiny.yaml", "--out", tmp / "run", "--no-eval")
    assert "concept bottleneck in" in r.output
    from geoalign.data.scene_labels import load_scene_label_set

    _, coords, _ = load_scene_label_set("im2gps")
    pd.DataFrame(coords, columns=["lat", "lon"]).to_csv(tmp / "gallery.csv", index=False)
    return tmp / "run", tmp / "gallery.csv"


def test_concepts_list_shows_the_bundled_set_by_category():
    from geoalign.data.concept_sets import load_concept_set

    geography = load_concept_set("geography")
    r = invoke("concepts", "list")
    assert f"{len(geography)} concepts" in r.output
    for category in ("climate", "vegetation", "architecture", "signage", "religion"):
        assert category in r.output
    assert "skyscraper" in r.output and "other bundled sets: general" in r.output
    assert "General visual vocabulary" in invoke("concepts", "list", "general").output


def test_train_mp16_without_its_features_says_what_is_missing_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no features/ folder
    r = invoke("train", CONFIGS / "mp16.yaml", code=2)
    errors = [line for line in r.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in r.output
    assert "training features missing" in errors[0]
    assert (
        "features/mp16-clip-vit-l14-views8" in errors[0]
        and "geoalign features extract" in errors[0]
    )
    assert "--views 8 --augment simclr" in errors[0]  # the SimCLR views store the config reads


def test_train_writes_a_concept_model_with_its_country_bottleneck(trained):
    from geoalign.interpret.cbm import ConceptBottleneck, cbm_dir
    from geoalign.models.concept import ConceptAwareGeoCLIP

    run, _ = trained
    model = ConceptAwareGeoCLIP.load(run / "model")
    assert model.num_concepts == 391 and model.config.features == "places365-scene-labels"
    cbm = ConceptBottleneck.load(cbm_dir(run / "model"))
    assert "US" in cbm.classes and cbm.concepts == model.concept_set.names
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "concept"


def test_explain_rows_of_a_benchmark_chart_and_json(trained, tmp_path):
    run, gallery = trained
    r = invoke("explain", "--model", run, "--benchmark", "im2gps3k", "--index", 3,
               "--gallery", gallery, "--out", tmp_path)  # fmt: skip
    assert "strongest concepts" in r.output and "true location" in r.output
    record = json.loads(next(tmp_path.glob("000_row3_*.json")).read_text())
    assert len(record["concept_activations"]) == 8  # top_k of the config
    assert record["country"]["code"] and record["concept_contributions"]
    assert record["location"][0]["lat"] is not None and "truth" in record
    assert Path(record["chart"]).stat().st_size > 20_000
    # a model that reads scene labels cannot read a photo: said in one line, not a traceback
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not read")
    r = invoke("explain", photo, "--model", run, "--out", tmp_path / "none", code=2)
    assert "scene-label descriptors, not photos" in r.output
    assert not (tmp_path / "none").exists()  # a failed command leaves no empty folder behind


def test_explain_rules_between_two_countries(trained, tmp_path):
    run, _ = trained
    r = invoke("explain", "rules", "--countries", "CN,JP", "--benchmark", "im2gps3k",
               "--model", run, "--by", "truth", "--top", 4, "--out", tmp_path)  # fmt: skip
    assert "truth China" in r.output and "truth Japan" in r.output
    rules = pd.read_csv(tmp_path / "rules_CN_JP.csv")
    assert set(rules["favours"]) == {"CN", "JP"} and len(rules) == 8
    assert (tmp_path / "rules_CN_JP_sankey.png").stat().st_size > 20_000


def test_concept_map_forest_over_us_states_against_a_reference(trained, tmp_path):
    run, _ = trained
    reference = tmp_path / "forest.csv"
    pd.DataFrame({"state": ["Maine", "Montana", "Oregon", "Georgia", "Nevada", "Kansas", "Iowa"],
                  "forest_pct": [89, 27, 48, 67, 16, 5, 8]}).to_csv(reference, index=False)  # fmt: skip
    r = invoke("concepts", "map", "forest", "--region", "US-states", "--reference", reference,
               "--model", run, "--spacing-km", 300, "--out", tmp_path / "maps")  # fmt: skip
    assert "Pearson" in r.output
    stats = json.loads((tmp_path / "maps" / "forest_US-states.json").read_text())
    assert stats["n_regions"] == 7 and -1 <= stats["pearson_r"] <= 1
    assert "concept score" in stats["similarity"]  # "forest" is in the model's set
    assert (tmp_path / "maps" / "forest_US-states.png").stat().st_size > 20_000


@pytest.mark.slow  # UMAP (numba) takes ~15 s to compile on a 2-core CPU
def test_analyze_embeddings_umap_kmeans(trained, tmp_path):
    run, _ = trained
    invoke("analyze", "embeddings", "--benchmark", "im2gps3k", "--umap", "--kmeans", 8,
           "--model", run, "--max-images", 300, "--out", tmp_path)  # fmt: skip
    summary = json.loads((tmp_path / "embeddings.json").read_text())
    assert summary["method"] == "umap" and summary["images"] == 300
    assert len(summary["clusters"]) == 8
    for name in ("image_embeddings.png", "joint_embeddings.png"):
        assert (tmp_path / name).stat().st_size > 20_000


def test_analyze_embeddings_pca_without_umap(trained, tmp_path):
    run, _ = trained
    invoke("analyze", "embeddings", "--benchmark", "im2gps3k", "--pca", "--kmeans", 4,
           "--model", run, "--max-images", 200, "--no-joint", "--out", tmp_path)  # fmt: skip
    summary = json.loads((tmp_path / "embeddings.json").read_text())
    assert summary["method"] == "pca" and len(summary["clusters"]) == 4


def test_explain_fit_cbm_refits_the_bottleneck_beside_a_copy_of_the_model(trained, tmp_path):
    import shutil

    from geoalign.interpret.cbm import ConceptBottleneck, cbm_dir

    run, _ = trained
    model = shutil.copytree(run / "model", tmp_path / "model")
    shutil.rmtree(cbm_dir(model))
    r = invoke("explain", "fit-cbm", "--model", model, "--features", "scene-labels:im2gps",
               "--min-per-class", 5, "--target-nonzero", 4)  # fmt: skip
    assert "fitting the country bottleneck on 237 photos" in " ".join(r.output.split())
    assert f"saved {cbm_dir(model)}" in " ".join(r.output.split())
    cbm = ConceptBottleneck.load(cbm_dir(model))
    assert cbm.classes and cbm.metrics["nonzero_per_class"] <= 2 * 4  # near the target, of 391
    assert (run / "model" / cbm_dir(run / "model").name).is_dir()  # the original is untouched
