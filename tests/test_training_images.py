"""Training from photos: P SimCLR views per image through a frozen backbone, each view with its
own noisy copy of the coordinates."""

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import CLIPVisionConfig

from geoalign.data.manifest import load_manifest
from geoalign.data.transforms import simclr_views_for
from geoalign.nn.backbones import ClipBackbone
from geoalign.training.config import config_from_dict
from geoalign.training.data import ImageSource
from geoalign.training.run import train


def test_training_from_photos_with_two_views(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)  # two "places", told apart by colour
        img = Image.new("RGB", (40, 48), colour)
        img.putpixel((int(rng.integers(40)), int(rng.integers(48))), (255, 255, 255))
        img.save(tmp_path / f"{i}.jpg")
        lat, lon = (48.85, 2.35) if i % 2 else (-33.87, 151.21)
        rows.append({"image": f"{i}.jpg", "lat": lat, "lon": lon})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    manifest = load_manifest(tmp_path / "manifest.csv", check_files=True).clean()

    torch.manual_seed(0)
    backbone = ClipBackbone.from_config(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=16,
            projection_dim=24,
        )
    )
    views = simclr_views_for(backbone.preprocess, 2)
    sample = views(Image.open(tmp_path / "0.jpg"))
    assert sample.shape == (2, 3, 32, 32) and not torch.equal(sample[0], sample[1])
    src = ImageSource(manifest, views, num_workers=0)
    seen = []
    cfg = config_from_dict(
        {
            "model": {
                "init": "scratch",
                "queue_size": 16,
                "location_encoder": {
                    "n_frequencies": 16,
                    "hidden_dim": 32,
                    "n_hidden": 1,
                    "embed_dim": 16,
                },
                "image_head": {"hidden_dim": 16, "out_dim": 16},
            },
            "data": {"source": "images", "views": 2},
            "optim": {"lr": 1e-2, "batch_size": 8, "epochs": 1},
            "trainer": {
                "out_dir": str(tmp_path / "run"),
                "resume": None,
                "progress": False,
                "log_every_n_steps": 1,
            },
        }
    )
    import lightning as L

    class Peek(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(tuple(batch["pixels"].shape))

    result = train(cfg, source=(src, backbone.embed_dim, backbone), extra_callbacks=[Peek()])
    assert result.global_step == 3 and seen[0] == (8, 2, 3, 32, 32)
    assert result.model.config.image_head.in_dim == 24
    # the frozen backbone is not part of the exported model or the training checkpoint
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert not any("backbone" in k for k in state) and all(
        p.grad is None for p in backbone.parameters()
    )
