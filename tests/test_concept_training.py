"""Concept-aware GeoCLIP through the training harness, then every interpretation command on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from geoalign.cli.app import app

CITIES = np.array(
    [[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.21], [-22.9, -43.2]]
)
CODES = ["FR", "US", "JP", "AU", "BR"]


def run_config(out, **concept):
    return {
        "method": "concept",
        "name": "concept-test",
        "model": {
            "init": "scratch",
            "queue_size": 256,
            "location_encoder": {
                "n_frequencies": 32,
                "hidden_dim": 64,
                "n_hidden": 1,
                "embed_dim": 32,
                "sigmas": [1.0, 4.0],
            },  # fmt: skip
            "image_head": {"hidden_dim": 32, "out_dim": 32},
        },
        "data": {"source": "arrays"},
        "optim": {"lr": 3e-3, "batch_size": 100, "epochs": 4},
        "trainer": {"out_dir": str(out), "resume": None, "progress": False, "log_every_n_steps": 1},
        "concept": {"text_encoder": "tiny:16", "k": 30, "head_hidden": [32], "top_k": 6, **concept},
        "cbm": {"min_per_class": 20, "target_nonzero": 5},
    }


def city_data(n: int = 1200, seed: int = 0):
    rng = np.random.default_rng(seed)
    city = rng.integers(0, 5, n)
    coords = CITIES[city] + rng.normal(scale=0.5, size=(n, 2))
    feats = (np.eye(5)[city] + rng.normal(scale=0.2, size=(n, 5))).astype("f4")
    return feats, coords, city


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from geoalign.training.concept import concept_run_from_dict, train_concept

    out = tmp_path_factory.mktemp("concept-run")
    feats, coords, city = city_data()
    run = concept_run_from_dict(run_config(out / "run"), source="test")
    result = train_concept(run, arrays=(feats[:1000], coords[:1000]))
    data = out / "data.npz"
    np.savez(
        data, features=feats, coords=coords, ids=np.array([f"img{i}" for i in range(len(feats))])
    )
    gallery = out / "gallery.csv"
    pd.DataFrame(coords[:1000], columns=["lat", "lon"]).to_csv(gallery, index=False)
    return result, out, feats, coords, city


def test_concept_model_learns_a_known_mapping(trained):
    from geoalign.baselines import DensestLocation
    from geoalign.evaluation.harness import evaluate_baselines, evaluate_model
    from geoalign.models.concept import ConceptAwareGeoCLIP

    result, out, feats, coords, _ = trained
    log = pd.read_csv(out / "run" / "logs" / "metrics.csv")
    loss = log["train/contrastive_loss"].dropna().to_numpy()
    # chance is ln(100 + 256 candidates) = 5.9; ~70 same-city candidates per photo floor it at ~4.2
    assert loss[-5:].mean() < 0.75 * loss[0] and loss[-5:].mean() < 4.6
    concept = log["train/concept_loss"].dropna().to_numpy()
    assert np.isfinite(concept).all() and concept[-5:].mean() < 0.2 * concept[:5].mean()
    (top1,) = evaluate_model(
        result.model, feats[1000:], coords[1000:], coords[:1000], modes=["top1"]
    )
    (prior,) = evaluate_baselines(
        [DensestLocation(radius_km=500)], feats[:1000], coords[:1000], feats[1000:], coords[1000:]
    )
    assert top1.metrics["acc@750km"] > 90 and prior.metrics["acc@750km"] < 30

    cfg = json.loads((result.export_dir / "config.json").read_text())
    assert cfg["method"] == "concept" and len(cfg["concept"]["info"]["names"]) == 30
    assert (out / "run" / "config.yaml").read_text().startswith("method: concept")
    model = ConceptAwareGeoCLIP.load(result.export_dir).eval()
    x = torch.from_numpy(feats[1000:1100])
    with torch.no_grad():
        z = model.concepts_from_features(x)
        acts = model.activations(model.encode_images(x))
        perm = torch.randperm(100)
        z_perm = model.concepts_from_features(x[perm])
    assert torch.isfinite(z).all()
    assert ((acts != 0).sum(1) == 6).all()  # sparse as configured (top_k 6)
    assert torch.allclose(z_perm, z[perm], atol=1e-5)  # no dependence on batch order


def test_country_bottleneck_was_fitted_after_training(trained):
    from geoalign.interpret.cbm import ConceptBottleneck, cbm_dir

    result, *_ = trained
    cbm = ConceptBottleneck.load(cbm_dir(result.export_dir))
    assert sorted(cbm.classes) == sorted(CODES)
    assert cbm.metrics["val_accuracy"] > 0.9  # the five cities are five countries


def test_quickstart_yaml_is_the_quickstart_row(tmp_path):
    """configs/concept/quickstart.yaml trains what `geoalign quickstart` reports as its row."""
    from pathlib import Path

    from geoalign.training.concept import load_concept_config, quickstart_run
    from geoalign.training.quickstart import quickstart_config

    path = Path(__file__).resolve().parents[1] / "configs" / "concept" / "quickstart.yaml"
    from_file = load_concept_config(path, [f"trainer.out_dir={tmp_path}"])
    row = quickstart_run(quickstart_config(tmp_path), tmp_path)
    assert from_file.train == row.train
    assert from_file.concept == row.concept and from_file.cbm == row.cbm


@pytest.mark.slow
def test_lambda_zero_is_plain_geoclip_training(tmp_path):
    """λ = 0 adds nothing to the gradient: the same seed gives GeoCLIP's image head."""
    from geoalign.training.concept import concept_run_from_dict, train_concept
    from geoalign.training.config import config_from_dict
    from geoalign.training.run import train

    feats, coords, _ = city_data(300)
    raw = run_config(tmp_path / "c", lambda_concept=0.0)
    raw["optim"]["epochs"] = 1
    raw["cbm"] = {"fit": False}
    concept = train_concept(concept_run_from_dict(raw, source="t"), arrays=(feats, coords))
    plain_raw = {k: v for k, v in raw.items() if k not in {"method", "concept", "cbm"}}
    plain_raw["trainer"] = {**raw["trainer"], "out_dir": str(tmp_path / "g")}
    plain = train(config_from_dict(plain_raw), arrays=(feats, coords))
    for a, b in zip(
        concept.model.image_head.parameters(), plain.model.image_head.parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_concept_quickstart_learns_scene_labels(tmp_path):
    """The quickstart's concept-aware row on a quarter of YFCC26k: it must beat 1-NN on Im2GPS3k."""
    from geoalign.baselines import KNN
    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.evaluation.harness import evaluate_baselines, make_gallery
    from geoalign.training.concept import quickstart_rows
    from geoalign.training.quickstart import quickstart_config

    (x, y, _), (qx, qy, _) = load_scene_label_set("yfcc26k"), load_scene_label_set("im2gps3k")
    cfg = quickstart_config(tmp_path, **{"data.fraction": 0.25, "model.queue_size": 1024,
                                         "optim.batch_size": 256, "optim.epochs": 3,
                                         "trainer.progress": False})  # fmt: skip
    gallery, _ = make_gallery("train:3000", y, seed=0)
    rows, result = quickstart_rows(cfg, tmp_path, qx, qy, gallery)
    top1, mode = (next(r for r in rows if r.mode == m) for m in ("top1", "mode"))
    assert top1.name == "Concept-aware alignment (top-1)"
    (nn1,) = evaluate_baselines([KNN(k=1)], x, y, qx, qy)
    for key in ("acc@750km", "acc@2500km"):
        assert mode.metrics[key] > nn1.metrics[key] + 4, (key, mode.metrics, nn1.metrics)
    assert top1.metrics["acc@2500km"] > nn1.metrics["acc@2500km"] - 1.5
    assert (result.export_dir / "cbm" / "cbm.json").is_file()


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_cli_explain_rows_rules_error_bins_and_embeddings(trained, tmp_path):
    result, out, *_ = trained
    model, data, gallery = result.export_dir, out / "data.npz", out / "gallery.csv"
    invoke("explain", "--model", model, "--features", data, "--index", 1001, "--index", 1002,
           "--gallery", gallery, "--out", tmp_path / "exp")  # fmt: skip
    record = json.loads(next((tmp_path / "exp").glob("000_*.json")).read_text())
    assert record["country"]["code"] in CODES and len(record["concept_activations"]) == 6
    assert abs(sum(abs(c["contribution"]) for c in record["concept_contributions"]) - 1) < 0.3
    assert next((tmp_path / "exp").glob("001_row1002_*.png")).stat().st_size > 20_000

    invoke("explain", "rules", "--countries", "FR,JP", "--model", model, "--features", data,
           "--by", "truth", "--top", 3, "--out", tmp_path / "rules")  # fmt: skip
    rules = pd.read_csv(tmp_path / "rules" / "rules_FR_JP.csv")
    assert set(rules["favours"]) == {"FR", "JP"} and len(rules) <= 6
    assert (tmp_path / "rules" / "rules_FR_JP_sankey.png").is_file()

    r = invoke("analyze", "error-bins", "--model", model, "--features", data, "--gallery", gallery,
               "--edges", "0,100,1000,20000", "--top", 3, "--min-count", 1, "--out", tmp_path / "a")  # fmt: skip
    table = pd.read_csv(tmp_path / "a" / "concepts_by_error_bin.csv")
    assert table["n_images"].groupby(table["bin"]).first().sum() == 1200
    assert "| rank |" in r.output

    invoke("analyze", "embeddings", "--model", model, "--features", data, "--pca", "--kmeans", 5,
           "--max-images", 400, "--out", tmp_path / "emb")  # fmt: skip
    summary = json.loads((tmp_path / "emb" / "embeddings.json").read_text())
    assert summary["images"] == 400 and len(summary["clusters"]) == 5
    # five cities, five clusters: clusters are far purer than chance (~0.25)
    assert np.mean([c["countries"][0][1] for c in summary["clusters"]]) > 0.6
    assert (tmp_path / "emb" / "joint_embeddings.png").is_file()


def test_cli_concept_map_with_reference(trained, tmp_path):
    result, *_ = trained
    from geoalign.interpret.concept_maps import aggregate, concept_similarity, region_points
    from geoalign.models.concept import ConceptAwareGeoCLIP

    model = ConceptAwareGeoCLIP.load(result.export_dir)
    concept = model.concept_set.names[0]
    pts = region_points("US-states", 200)
    sims, how = concept_similarity(model, concept, pts.latlon)
    assert "concept score" in how and np.isfinite(sims).all()
    regions = aggregate(pts, sims)
    ref = regions.rename(columns={"region": "state"}).assign(
        cover=lambda f: 3 * f["similarity"] + 1
    )
    ref[["state", "cover"]].to_csv(tmp_path / "ref.csv", index=False)
    r = invoke("concepts", "map", concept, "--model", result.export_dir, "--region", "US-states",
               "--spacing-km", 200, "--reference", tmp_path / "ref.csv", "--out", tmp_path / "maps")  # fmt: skip
    stats = json.loads(next((tmp_path / "maps").glob("*.json")).read_text())
    assert stats["pearson_r"] == pytest.approx(1.0, abs=1e-6)
    assert "Pearson" in r.output and next((tmp_path / "maps").glob("*.png")).stat().st_size > 20_000


def test_cli_explain_photo_with_a_tiny_vision_tower(tmp_path):
    """`geoalign explain photo.jpg` end to end: a tiny CLIP vision tower saved as a folder, a
    concept model whose head reads its features, a country bottleneck, a chart."""
    from PIL import Image
    from transformers import CLIPVisionConfig

    from geoalign.interpret.cbm import cbm_dir, fit_country_cbm
    from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
    from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
    from geoalign.nn.backbones import ClipBackbone
    from geoalign.nn.image_head import ImageHeadConfig
    from geoalign.nn.location_encoder import LocationEncoderConfig

    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=32, patch_size=8, projection_dim=24)  # fmt: skip
    ClipBackbone.from_config(vcfg).model.save_pretrained(tmp_path / "tiny-clip")
    geo = GeoCLIP(GeoCLIPConfig(
        location_encoder=LocationEncoderConfig(n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16),
        image_head=ImageHeadConfig(in_dim=24, hidden_dim=32, out_dim=16), queue_size=16,
        features=f"hf:{tmp_path / 'tiny-clip'}",
    ))  # fmt: skip
    model = ConceptAwareGeoCLIP.build(geo, ConceptConfig(text_encoder="tiny:24", k=25), cache=False)
    feats, coords, _ = city_data(300, seed=1)
    rng = np.random.default_rng(0)
    model.save(tmp_path / "ckpt")
    padded = np.pad(feats, ((0, 0), (0, 19)))  # 24-d features, as the tiny tower gives
    fit_country_cbm(model, padded, coords, min_per_class=10).save(cbm_dir(tmp_path / "ckpt"))
    pd.DataFrame(coords, columns=["lat", "lon"]).to_csv(tmp_path / "g.csv", index=False)
    photo = tmp_path / "photo.jpg"
    Image.fromarray((rng.random((64, 80, 3)) * 255).astype("uint8")).save(photo)
    r = invoke("explain", photo, "--model", tmp_path / "ckpt", "--gallery", tmp_path / "g.csv",
               "--out", tmp_path / "out")  # fmt: skip
    assert "strongest concepts" in r.output
    record = json.loads((tmp_path / "out" / "000_photo.json").read_text())
    top = record["location"][0]
    assert np.min(np.abs(coords - [top["lat"], top["lon"]]).sum(1)) < 1e-6  # a gallery location
    assert record["country"]["code"] in CODES
    assert (tmp_path / "out" / "000_photo.png").stat().st_size > 20_000
