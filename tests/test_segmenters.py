"""ADE20K segmenters (tiny, from configs), their loading errors, the segmentation store and CLI."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.errors import DataError, GeoalignError, WeightsNotFoundError
from geoalign.nn.backbones import load_backbone
from geoalign.nn.segmenters import Segmenter, load_segmenter, parse_spec

runner = CliRunner()


def tiny_segformer_config():
    from transformers import SegformerConfig

    return SegformerConfig(
        num_labels=150,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
    )


def tiny_oneformer_config():
    from transformers import OneFormerConfig, SwinConfig

    swin = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return OneFormerConfig(
        backbone_config=swin,
        num_labels=150,
        num_queries=8,
        hidden_dim=32,
        conv_dim=32,
        mask_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        text_encoder_width=32,
        text_encoder_num_layers=1,
        text_encoder_context_length=8,
        task_seq_len=8,
        text_encoder_n_ctx=2,
        query_dec_layers=1,
    )


@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    return Segmenter.from_config(tiny_segformer_config(), input_size=64)


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory, segformer):
    path = tmp_path_factory.mktemp("tiny-segformer")
    segformer.model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {"size": {"height": 64, "width": 64}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
        )
    )
    return path


def _images(b=2, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def test_segformer_maps_match_the_processor_postprocessing(segformer):
    from transformers import SegformerImageProcessor

    images = _images()
    maps = segformer(images)
    assert maps.shape == (2, 40, 56) and maps.dtype == torch.uint8
    assert int(maps.max()) < 150
    with torch.no_grad():
        out = segformer.model(pixel_values=segformer.preprocess(images))
    ref = SegformerImageProcessor().post_process_semantic_segmentation(out, [(40, 56)] * 2)
    assert torch.equal(maps.long(), torch.stack(ref).long())
    # float [0, 1] input is the same image
    assert torch.equal(segformer(images.float() / 255), maps)
    assert segformer(images, size=(12, 12)).shape == (2, 12, 12)


def test_oneformer_maps_match_the_processor_postprocessing():
    from transformers import OneFormerImageProcessor

    torch.manual_seed(0)
    seg = Segmenter.from_config(
        tiny_oneformer_config(), input_size=64, task_inputs=torch.arange(1, 9)
    )
    images = _images(h=48, w=48)
    maps = seg(images)
    assert maps.shape == (2, 48, 48) and int(maps.max()) < 150
    px = seg.preprocess(images)
    assert px.shape == (2, 3, 64, 64)  # shortest side to the input size
    with torch.no_grad():
        out = seg.model(pixel_values=px, task_inputs=seg.task_inputs.expand(2, -1))
    ref = OneFormerImageProcessor().post_process_semantic_segmentation(out, [(48, 48)] * 2)
    assert torch.equal(maps.long(), torch.stack(ref).long())
    with pytest.raises(ValueError, match="task_inputs"):
        Segmenter.from_config(tiny_oneformer_config())


def test_load_segmenter_from_local_folder(segformer_dir, segformer):
    seg = load_segmenter(f"hf:{segformer_dir}")
    assert seg.kind == "segformer" and seg.input_size == 64
    assert torch.allclose(seg.mean, torch.full((1, 3, 1, 1), 0.5))
    images = _images()
    ref = Segmenter(
        segformer.model, "segformer", name="x", input_size=64, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert torch.equal(seg(images), ref(images))


def test_missing_weights_name_the_cache_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("GEOALIGN_SEGFORMER_PATH", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        load_segmenter("segformer-ade20k", local_files_only=True)
    text = str(err.value)
    assert (
        str(tmp_path / "hub") in text
        and "models--nvidia--segformer-b0-finetuned-ade-512-512" in text
    )
    assert "hf download nvidia/segformer-b0-finetuned-ade-512-512" in text
    assert "GEOALIGN_SEGFORMER_PATH" in text
    monkeypatch.setenv("GEOALIGN_ONEFORMER_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFoundError, match="GEOALIGN_ONEFORMER_PATH"):
        load_segmenter("oneformer-ade20k")
    with pytest.raises(WeightsNotFoundError, match="no such folder"):
        load_segmenter(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(GeoalignError, match="unknown segmenter spec"):
        parse_spec("mask2former")
    assert parse_spec("oneformer-ade20k") == "shi-labs/oneformer_ade20k_swin_large"


@pytest.mark.parametrize(
    ("load", "spec", "repo", "env_var"),
    [
        (load_backbone, "clip-vit-l14", "openai/clip-vit-large-patch14", "GEOALIGN_CLIP_PATH"),
        (
            load_segmenter,
            "segformer-ade20k",
            "nvidia/segformer-b0-finetuned-ade-512-512",
            "GEOALIGN_SEGFORMER_PATH",
        ),
    ],
    ids=["backbone", "segmenter"],
)
def test_backbone_and_segmenter_explain_missing_weights_alike(
    load, spec, repo, env_var, tmp_path, monkeypatch
):
    """One message, line for line: the model id, the cache folder searched, the environment
    variable, and every way to provide the weights (HF_HUB_OFFLINE=1: nothing is downloaded)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(env_var, raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        load(spec)
    short, q = repo.split("/")[-1], re.escape
    expected = [
        rf"Could not load \w+ weights '{q(repo)}'\.",
        "Looked in:",
        rf"  - Hugging Face cache {q(str(hub))} \(folder models--{q(repo.replace('/', '--'))}\)"
        r" — offline \(HF_HUB_OFFLINE\), no download tried",
        rf"  - \${env_var} \(not set\)",
        "To fix, do one of:",
        rf"  - on a machine with internet: `huggingface-cli download {q(repo)}` \(or `hf download "
        rf"{q(repo)}`\), then copy the cache folder here and set HF_HUB_CACHE \(or HF_HOME\) to it",
        rf"  - pass a local folder holding config\.json.+: \w+ spec `hf:/path/to/{q(short)}`",
        rf"  - set {env_var}=/path/to/{q(short)}",
        "  - if this machine has internet, unset HF_HUB_OFFLINE so the weights download",
        r"\(underlying error: OSError: .+\)",
    ]
    lines = str(err.value).splitlines()
    assert len(lines) == len(expected), str(err.value)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    with pytest.raises(WeightsNotFoundError) as err:
        load(f"hf:{tmp_path / 'absent'}")
    assert f"  - local folder {tmp_path / 'absent'} (no such folder)" in str(err.value).splitlines()


# --- the segmentation store ----------------------------------------------------------------------


@pytest.fixture
def photo_manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        name = f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (30 + 4 * i, 40, 3), dtype=np.uint8)).save(
            tmp_path / name
        )
        rows.append(f"{name},{10 + i},{20 - i}")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.insert(2, "broken.png,0,0")
    path = tmp_path / "train.csv"
    path.write_text("image,lat,lon\n" + "\n".join(rows) + "\n")
    return path


def test_store_maps_are_the_segmentation_of_the_backbone_crop(photo_manifest, segformer, tmp_path):
    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import (
        SegmentationStore,
        crop_transform,
        extract_segmentations,
        normalize,
    )
    from geoalign.data.transforms import build_transform, clip_config

    pre = clip_config(image_size=24)
    manifest = load_manifest(photo_manifest).clean()
    out = tmp_path / "segs"
    with pytest.warns(UserWarning, match="1 of 6 images"):
        store = extract_segmentations(
            manifest, segformer, out, preprocess=pre, batch_size=2, shard_size=4, progress=False
        )
    assert len(store) == 6 and store.size == 24 and store.complete
    assert store.ok.tolist() == [True, True, False, True, True, True]
    assert (store[2] == 255).all()
    assert "broken.png" in store.failures()["image"].iloc[0]
    from geoalign.data.images import load_image

    crop = crop_transform(pre)(load_image(manifest.path(3)))
    assert torch.equal(torch.from_numpy(store[3]), segformer(crop[None])[0])
    # crop + normalize is exactly the backbone's evaluation transform
    torch.testing.assert_close(
        normalize(crop, pre), build_transform(pre)(load_image(manifest.path(3))), atol=1e-6, rtol=0
    )
    # resume: delete one shard, rerun, same bytes; a different geometry is refused
    before = store.maps(range(6)).copy()
    (out / "shard-00001.npy").unlink()
    with pytest.warns(UserWarning):
        again = extract_segmentations(
            manifest, segformer, out, preprocess=pre, batch_size=3, shard_size=4, progress=False
        )
    assert np.array_equal(again.maps(range(6)), before)
    from geoalign.data.transforms import PreprocessConfig

    other = PreprocessConfig(image_size=24, interpolation="bilinear")
    with pytest.raises(DataError, match="geometry"):
        extract_segmentations(manifest, segformer, out, preprocess=other, shard_size=4)
    SegmentationStore(out).check_manifest(manifest)
    with pytest.raises(DataError, match="rows"):
        SegmentationStore(out).check_manifest(manifest.subset(np.arange(3)))


def test_segment_cli_extract_and_info(photo_manifest, segformer_dir, tmp_path, monkeypatch):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = tmp_path / "clip"
    cfg = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=8,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(clip)
    out = tmp_path / "segs"
    args = [
        "segment",
        "extract",
        str(photo_manifest),
        "--out",
        str(out),
        "--segmenter",
        f"hf:{segformer_dir}",
        "--backbone",
        f"hf:{clip}",
        "--skip-bad-rows",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "6 maps of 28x28 (1 unreadable" in res.output
    res = runner.invoke(app, ["segment", "info", str(out), "--json"])
    info = json.loads(res.stdout)
    assert (
        info["rows"] == 6
        and info["failed"] == 1
        and info["complete"]
        and info["segmenter"]["labels"] == 150
    )
    res = runner.invoke(app, ["segment", "info", str(tmp_path)])
    assert res.exit_code == 2 and "not a segmentation store" in res.output
