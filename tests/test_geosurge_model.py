"""GeoSURGE model: checkpoints, the prediction API (priors, places, ten-crop), gallery refinement,
the backbone/fusion paths with tiny models, and learning a known mapping."""

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from _geosurge import tiny_clip_dir
from geoalign.errors import GeoalignError
from geoalign.evaluation.harness import evaluate_model
from geoalign.geo.cells import CellHierarchy, PartitionRules
from geoalign.geo.distance import haversine_km
from geoalign.inference.cell_gallery import CellGallery
from geoalign.inference.locator import Geolocator
from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig
from geoalign.models.registry import load_model
from geoalign.nn.semantic_fusion import SemanticFusionConfig

__all__ = ["tiny_clip_dir"]  # a shared fixture (tests/_geosurge.py)

N_CLUSTERS = 30


def tiny_segformer():
    """A SegFormer with 150 ADE20K classes and tiny widths (random weights)."""
    from transformers import SegformerConfig

    from geoalign.nn.segmenters import Segmenter

    cfg = SegformerConfig(
        num_labels=150,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
    )
    return Segmenter.from_config(cfg, input_size=32)


@pytest.fixture(scope="module")
def world():
    """Points around 30 centres; features = noisy one-hot of the centre (a known mapping)."""
    rng = np.random.default_rng(0)
    centers = rng.uniform([-55, -170], [65, 170], size=(N_CLUSTERS, 2))
    which = rng.integers(0, N_CLUSTERS, 5000)
    pts = centers[which] + rng.normal(0, 1.0, (5000, 2))
    feats = np.eye(N_CLUSTERS)[which] + rng.normal(0, 0.1, (5000, N_CLUSTERS))
    hierarchy = CellHierarchy.build(
        pts[:4000, 0], pts[:4000, 1], tau_max=(1200, 400, 120), rules=PartitionRules(tau_min=15)
    )
    return hierarchy, torch.tensor(feats, dtype=torch.float32), pts


def _model(hierarchy, **kw) -> GeoSurge:
    cfg = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        embed_dim=16,
        feature_dim=N_CLUSTERS,
        feature_head="linear",
        **kw,
    )
    return GeoSurge(cfg, hierarchy)


@contextmanager
def one_thread():
    """Tiny models: thread start-up and contention cost more than they gain (2-4x on this CI)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _fit(model: GeoSurge, feats, pts, steps=200) -> GeoSurge:
    torch.manual_seed(0)
    labels = model.assign(pts[:4000])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    with one_thread():
        for _ in range(steps):
            idx = torch.randint(0, 4000, (256,))
            loss = model.loss(model.visual_from_features(feats[idx]), labels[idx]).total
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    hierarchy, feats, pts = world
    model = _fit(_model(hierarchy), feats, pts)
    path = model.save(tmp_path_factory.mktemp("geosurge") / "last")
    return model, path


def _errors(locator, feats, pts, **kw):
    cands = locator.predict_features(feats[4000:], top_k=1, **kw)
    pred = np.array([[c[0].lat, c[0].lon] for c in cands])
    return haversine_km(pred[:, 0], pred[:, 1], pts[4000:, 0], pts[4000:, 1])


def test_learns_a_known_mapping_beyond_the_prior(world, trained):
    hierarchy, feats, pts = world
    model, _ = trained
    err = _errors(Geolocator(model), feats, pts)
    # The prior: always the mean of the most populated finest cell.
    fine = hierarchy.partitions[-1]
    top = int(np.argmax(fine.counts))
    prior = haversine_km(fine.lat_mean[top], fine.lon_mean[top], pts[4000:, 0], pts[4000:, 1])
    assert (err < 750).mean() > 0.9 > (prior < 750).mean() + 0.5
    assert np.median(err) < 0.2 * np.median(prior)
    for objective in ("classifier",):  # the Table VI ablation learns the same mapping
        other = _fit(_model(hierarchy, objective=objective), feats, pts)
        assert (_errors(Geolocator(other), feats, pts) < 750).mean() > 0.9


def test_checkpoint_roundtrip_and_predict_hook(world, trained):
    hierarchy, feats, pts = world
    model, path = trained
    assert {p.name for p in path.iterdir()} >= {"model.safetensors", "config.json", "cells"}
    loaded = GeoSurge.load(path)
    q0 = model.encode_features(feats[:8])
    q1 = loaded.encode_features(feats[:8])
    torch.testing.assert_close(loaded.cell_log_scores(q1), model.cell_log_scores(q0).detach())
    assert np.array_equal(loaded.cell_latlon, model.cell_latlon)
    # Geolocator.from_pretrained loads it through the registry (config.json's "method")
    locator = Geolocator.from_pretrained(str(path), backbone=None)
    assert isinstance(locator.model, GeoSurge) and locator.backbone is None
    assert locator.candidates.kind == "cells"
    with pytest.raises(ValueError, match="no backbone"):
        next(locator.iter_predict([np.zeros((8, 8, 3), np.uint8)]))


def test_predictions_probabilities_priors_and_places(world, trained):
    from geoalign.geo.priors import Radius

    hierarchy, feats, pts = world
    locator = Geolocator(trained[0])
    n = hierarchy.sizes[-1]
    cands = locator.predict_features(feats[4000:4002], top_k=n)
    for row in cands:
        probs = [c.prob for c in row]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, rel=1e-4)
        assert sorted(c.gallery_index for c in row) == list(range(n))
    centre = pts[4000]
    prior = Radius(centre[0], centre[1], 1500)
    inside = prior.mask(locator.model.cell_latlon)
    cands = locator.predict_features(feats[4000:4010], top_k=3, prior=prior, places=True)
    for row in cands:
        assert all(inside[c.gallery_index] for c in row)
        assert all(haversine_km(c.lat, c.lon, *centre) <= 1500 for c in row)
        assert len(row[0].place["country_code"]) == 2 and row[0].place["city"]
    with pytest.raises(ValueError, match="contains no candidate location"):
        locator.predict_features(feats[:1], prior=Radius(-89, 0, 10))


def test_gallery_refinement_matches_brute_force(world, trained):
    hierarchy, feats, pts = world
    rng = np.random.default_rng(1)
    gallery = pts[:4000][rng.choice(4000, 300, replace=False)]
    gallery = np.concatenate([gallery, [[-85.0, 0.0]]])  # outside every cell
    ref = CellGallery(gallery, hierarchy)
    cells_of = hierarchy.assign(gallery[:, 0], gallery[:, 1])[:, -1]
    assert ref.point_cell[-1] == -1
    fine = hierarchy.partitions[-1]
    cells = np.arange(len(fine)).reshape(1, -1)
    scores = torch.from_numpy(rng.normal(size=(1, len(gallery))))
    for use_scores in (False, True):
        coords, idx = ref.refine(cells, scores if use_scores else None)
        for c in range(len(fine)):
            members = np.flatnonzero(cells_of == c)
            if members.size == 0:
                assert idx[0, c] == -1
                assert coords[0, c].tolist() == [fine.lat_mean[c], fine.lon_mean[c]]
                continue
            if use_scores:
                best = members[np.argmax(scores[0, members].numpy())]
            else:
                d = haversine_km(
                    gallery[members, 0], gallery[members, 1], fine.lat_mean[c], fine.lon_mean[c]
                )
                best = members[np.argmin(d)]
            assert idx[0, c] == best and coords[0, c].tolist() == gallery[best].tolist()
    locator = Geolocator(trained[0], gallery=gallery, coordinates="gallery")
    row = locator.predict_features(feats[4000:4001], top_k=1)[0][0]
    assert [row.lat, row.lon] in gallery.tolist() or ref.nearest[row.gallery_index] == -1
    with pytest.raises(GeoalignError, match="needs a GPS gallery"):
        Geolocator(trained[0], coordinates="gallery")


# --- backbone and fusion paths with tiny models ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_segmenter():
    torch.manual_seed(0)
    return tiny_segformer()


TINY_FUSION = dict(
    image_size=28,
    patch_size=14,
    token_dim=8,
    visual_dim=16,
    attention_dim=16,
    num_heads=2,
    latent_dim=4,
    mlp_dim=16,
    num_blocks=2,
    out_dim=16,
)


@pytest.mark.parametrize("visual", ["backbone", "fusion"])
def test_trained_backbone_block_roundtrip(world, tiny_clip_dir, tiny_segmenter, visual, tmp_path):
    from geoalign.nn.backbones import load_backbone
    from geoalign.training.geosurge import set_trainable

    hierarchy = world[0]
    fusion = visual == "fusion"
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    cfg = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        embed_dim=16,
        visual=visual,
        backbone=f"hf:{tiny_clip_dir}",
        image_size=28,
        fusion=SemanticFusionConfig(**TINY_FUSION) if visual == "fusion" else None,
        segmenter="tiny" if visual == "fusion" else None,
    )
    model = GeoSurge(cfg, hierarchy, backbone=backbone)
    set_trainable(model)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("encoder.layers.1." in n or visual == "backbone" for n in trainable)
    assert not any("encoder.layers.0." in n for n in trainable)
    assert any("visual_projection" in n for n in trainable) == (visual == "backbone")
    with torch.no_grad():  # perturb the trainable block so a load that skipped it would show
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.1)
    pixels = torch.randn(3, 3, 28, 28)
    seg = torch.randint(0, 150, (3, 28, 28)) if visual == "fusion" else None
    out = model.visual_from_pixels(pixels, seg)
    assert out.shape == (3, 16)
    path = model.save(tmp_path / "m")
    from safetensors.torch import load_file

    saved = {
        k[len("backbone.") :]
        for k in load_file(path / "model.safetensors")
        if k.startswith("backbone.")
    }
    assert saved == trainable
    loaded = load_model(path)  # the registry, as every consumer loads it
    assert type(loaded) is GeoSurge and loaded.reads == (
        "pixels+segmentation" if fusion else "pixels"
    )
    torch.testing.assert_close(loaded.visual_from_pixels(pixels, seg), out.detach())
    # Prediction from pixels, incl. the ten-crop rule (mean of the crops' queries).
    locator = Geolocator(loaded, segmenter=tiny_segmenter if visual == "fusion" else None)
    crops = torch.randn(2, 4, 3, 28, 28)
    q = locator.embed_pixels(crops)
    q_each = locator.embed_pixels(crops.flatten(0, 1)).view(2, 4, -1).mean(1)
    torch.testing.assert_close(q, q_each)
    preds = locator.predict(
        list(np.random.default_rng(0).integers(0, 255, (2, 40, 50, 3), dtype=np.uint8))
    )
    assert [p.ok for p in preds] == [True, True] and len(preds[0].candidates) == 5
    photos = list(np.random.default_rng(1).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8))
    ten = locator.predict(photos, ten_crop=True, top_k=1)
    assert [p.ok for p in ten] == [True] * 3
    # from the checkpoint alone, as `geoalign predict` loads it: the same probabilities
    pretrained = Geolocator.from_pretrained(
        str(path), segmenter=tiny_segmenter if fusion else "auto"
    )
    assert type(pretrained.model) is GeoSurge and pretrained.model.reads == loaded.reads
    torch.testing.assert_close(
        pretrained.log_probs(pretrained.embed_pixels(crops)), locator.log_probs(q)
    )
    # evaluation from photos, through the one harness (ten-crop as published)
    from geoalign.evaluation.harness import evaluate_photos

    truth = np.array([[10.0, 20.0], [-5.0, 30.0], [40.0, -70.0], [0.0, 0.0]])
    rows, kept, failed = evaluate_photos(
        locator, [*photos, str(tmp_path / "missing.jpg")], truth, ten_crop=True, modes=["top1"]
    )
    assert list(kept) == [0, 1, 2] and len(failed) == 1 and "missing.jpg" in failed[0][0]
    assert np.allclose(rows[0].latlon, [[p.candidates[0].lat, p.candidates[0].lon] for p in ten])
    if visual == "backbone":  # the checkpoint alone: backbone and block from its config.json
        from geoalign.evaluation.run import evaluate_checkpoint_photos

        run = evaluate_checkpoint_photos(
            path,
            photos,
            truth[:3],
            ["a", "b", "c"],
            benchmark="custom",
            out=tmp_path / "ev",
            ten_crop=True,
            modes=["top1", "median"],
        )
        top1, median = run.evaluation.results
        assert np.allclose(top1.latlon, rows[0].latlon) and median.mode == "median"
        assert run.paths["markdown"].is_file() and run.evaluation.meta["ten_crop"]
    if visual == "fusion":
        with pytest.raises(GeoalignError, match="segmenter"):
            Geolocator(loaded)
        with pytest.raises(GeoalignError, match="not precomputed features"):
            loaded.encode_features(torch.randn(1, 16))
        with pytest.raises(GeoalignError, match="not precomputed features"):
            evaluate_model(loaded, torch.randn(2, 16), np.zeros((2, 2)))


def test_evaluation_result_and_ten_crop_features(world, trained):
    hierarchy, feats, pts = world
    locator = Geolocator(trained[0])
    (res,) = evaluate_model(trained[0], feats[4000:], pts[4000:], name="gs", modes=["top1"])
    assert res.name == "gs (top-1 cell)" and res.metrics["n"] == 1000
    assert np.allclose(res.dist_km, _errors(locator, feats, pts))
    crops = feats[4000:4010, None].expand(-1, 3, -1)  # identical crops: same as one
    (ten,) = evaluate_model(locator, crops, pts[4000:4010], modes=["top1"])
    assert np.allclose(ten.latlon, res.latlon[:10])


def test_registry_decides_the_method(trained, tmp_path):
    from geoalign.errors import WeightsNotFoundError
    from geoalign.models.registry import checkpoint_method

    _, path = trained
    assert checkpoint_method(path) == checkpoint_method(path / "model.safetensors") == "geosurge"
    assert checkpoint_method(path.parent) == "geosurge"  # a run folder holding last/
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"")
    for bad in (tmp_path / "broken", tmp_path / "missing", tmp_path):
        with pytest.raises(WeightsNotFoundError):
            checkpoint_method(bad)


def test_report_rows_top1_and_mode_seeking(world, trained):
    from geoalign.errors import DataError
    from geoalign.models.registry import load_model

    hierarchy, feats, pts = world
    model, path = trained
    x, truth = feats[4000:4400], pts[4000:4400]
    seen = []
    loaded = load_model(path)
    top1, mode = evaluate_model(
        loaded, x, truth, name="gs", modes=["top1", "mode"], radius_km=750.0, progress=seen.append
    )
    assert sum(seen) == 400 and top1.mode == "top1" and mode.mode == "mode"
    assert top1.name == "gs (top-1 cell)" and mode.name == "gs (mode, 750 km)"
    ref = Geolocator(model).predict_features(x, top_k=1)
    assert np.allclose(top1.latlon, [[c[0].lat, c[0].lon] for c in ref])
    assert np.allclose(top1.prob, [c[0].prob for c in ref], atol=1e-6)
    # Mode seeking, brute force: the cell whose 750 km neighbourhood holds the most mass.
    with torch.no_grad():
        probs = model.cell_log_scores(model.encode_features(x)).softmax(-1)
    cells = model.cell_latlon
    near = haversine_km(cells[:, None, 0], cells[:, None, 1], cells[None, :, 0], cells[None, :, 1])
    mass = probs.double().numpy() @ (near <= 750.0)
    assert np.allclose(mode.latlon, cells[mass.argmax(1)])
    assert np.allclose(mode.prob, mass.max(1), atol=1e-5)
    assert (mode.prob >= top1.prob - 1e-6).all()  # a cell's mass includes its own probability
    # identical crops give the single-crop rows; errors name what is wrong
    (crops,) = evaluate_model(loaded, x[:20, None].expand(-1, 3, -1), truth[:20], modes=["mode"])
    assert np.allclose(crops.latlon, mode.latlon[:20])
    with pytest.raises(DataError, match="reads 30-d features"):
        evaluate_model(loaded, x[:, :5], truth, modes=["top1"])
    with pytest.raises(DataError, match="unknown prediction mode"):
        evaluate_model(loaded, x, truth, modes=["top5"])


def test_train_evaluates_a_photo_trained_run_from_photos(world, tiny_clip_dir, tmp_path):
    """eval.images: the after-training evaluation reads the photos through the trained block."""
    from types import SimpleNamespace

    from PIL import Image

    from geoalign.evaluation.run import evaluate_after_training
    from geoalign.nn.backbones import load_backbone
    from geoalign.training.config import EvalSection

    hierarchy = world[0]
    cfg = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        embed_dim=16,
        visual="backbone",
        backbone=f"hf:{tiny_clip_dir}",
        image_size=28,
    )
    model_dir = GeoSurge(cfg, hierarchy, backbone=load_backbone(f"hf:{tiny_clip_dir}")).save(
        tmp_path / "run" / "model"
    )
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg"
        )
        rows.append(f"{i}.jpg,{10 + i},{20 - i}")
    (tmp_path / "test.csv").write_text("image,lat,lon\n" + "\n".join(rows) + "\n")
    run_cfg = SimpleNamespace(
        name="gs-photos",
        eval=EvalSection(
            benchmark=None,
            images=str(tmp_path / "test.csv"),
            ten_crop=True,
            modes=["top1"],
            baselines=False,
        ),
        trainer=SimpleNamespace(out_dir=str(tmp_path / "run"), seed=0),
        data=SimpleNamespace(source="images", path=None),
    )
    run = evaluate_after_training(run_cfg, model_dir)
    (top1,) = run.evaluation.results
    assert top1.metrics["n"] == 4 and run.evaluation.meta["ten_crop"] is True
    assert (tmp_path / "run" / "eval" / "report.md").is_file()
    # the model remembers the test set it was evaluated on (a manifest: named by its file)
    recorded = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert recorded["benchmark"] == run.evaluation.benchmark == "test.csv"
