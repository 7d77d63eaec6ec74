"""Write docs/config-reference.md from the typed training configs (every key, type, default and
meaning), so the reference cannot drift from the code: tests/test_config_reference.py checks that
the committed file equals this script's output.

    python scripts/config_reference.py            # rewrite docs/config-reference.md
    python scripts/config_reference.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"

# Meanings of keys whose definition carries no comment (the comment, where there is one, wins).
MEANINGS = {
    "name": "the run's name (reports and run folders)",
    "notes": "free text kept with the run",
    "model.queue_size": "GPS queue length S (extra negatives); 0 disables the queue",
    "model.queue_init": "how the queue starts: uniform on the sphere or in the lat/lon box",
    "model.temperature_init": "initial temperature τ (logit scale ln 1/τ)",
    "model.learn_temperature": "train the logit scale",
    "model.train_location_encoder": "update the location encoder (False: frozen)",
    "model.train_image_head": "update the image head (False: frozen)",
    "trainer.out_dir": "run folder: checkpoints, logs, the exported model",
    "trainer.accelerator": "auto, cpu or gpu (Lightning)",
    "trainer.devices": "processes per node (GPUs, or CPU processes under DDP)",
    "trainer.num_nodes": "machines (DDP)",
    "trainer.precision": "Lightning precision, e.g. 32-true or bf16-mixed",
    "trainer.seed": "seed of everything random in the run",
    "trainer.checkpoint_every_n_steps": "last.ckpt is written this often (and at epoch ends)",
    "trainer.log_every_n_steps": "metrics.csv row interval",
    "trainer.progress": "show the progress bar",
    "eval.benchmark": "test set name in reports (published rows only for it); None: the "
    "eval.queries store's folder name (Im2GPS3k for scene-label runs)",
    "eval.modes": "prediction rows: top1, mode, mean, median",
    "eval.ten_crop": "average the logits of ten crops (photo queries)",
    "eval.queries": "test features: a feature store or scene-labels:<benchmark>",
    "eval.after_training": "evaluate when training ends",
    "optim.lr": "learning rate (AdamW)",
    "optim.weight_decay": "AdamW weight decay",
    "optim.epochs": "passes over the training rows",
    "optim.max_steps": "stop after this many steps (-1: epochs decide)",
    "optim.gamma": "learning-rate decay factor per epoch (StepLR)",
    "model.queue_mode": "published: queue embeddings with gradients (the paper); detached or "
    "cached: faster, declared deviations",
    "data.source": "where training rows come from: arrays (Python), store, images, wds (shards of photos), scene-labels",
    "data.fraction_seed": "seed of the data.fraction subset",
    "data.num_workers": "data-loading worker processes",
    "data.images_root": "folder the manifest's image paths are under",
    "data.val_fraction": "share of the rows held out for validation",
    "data.split_seed": "seed of the validation split",
    "data.fraction": "train on this share of the rows (fixed by fraction_seed)",
    "data.read_rows": "store streaming: rows read per chunk",
    "concept.select": "how k concepts are picked from the set: balanced over categories, or first",
    "concept.text_encoder": "text encoder of the concept names (clip-vit-l14, minilm, ...)",
    "concept.learn_delta": "learn Δ in B = E + Δ",
    "concept.divergence": "L_concept: the paper's Gaussian-kernel form or Cauchy-Schwarz",
    "cbm.target_nonzero": "concepts the sparse bottleneck keeps (elastic-net path stops there)",
    "cbm.min_per_class": "countries with fewer training photos are left out of the bottleneck",
    "method": "which trainer reads the file",
    "reproduces": "the paper table this config reproduces, or none",
    "model.negatives": "InfoNCE candidates: the cells in the batch (paper) or all cells",
    "model.embed_dim": "width of the geocell embeddings",
    "model.visual": "features (frozen backbone), backbone (last block trains) or fusion",
    "model.feature_head": "map from features to embed_dim: identity, linear or mlp",
    "model.backbone": "backbone spec of the image side",
    "model.trainable_blocks": "last backbone blocks that train (backbone, fusion)",
    "model.coordinates": "a cell's coordinates: its mean training point, or a gallery point",
    "cells.tau_min": "cells with fewer training points are merged away",
    "cells.min_level": "coarsest S2 level a cell may have",
    "optim.monitor": "validation metric that picks the best checkpoint",
    "optim.monitor_mode": "whether a higher (max) or lower (min) monitor is better",
    "optim.val_batch_size": "batch size of the validation passes",
}


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class source (the meaning)."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if m:
            out[m[1]] = m[2].strip()
    return out


def _type(tp: object) -> str:
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"<class '([\w.]+)'>", lambda m: m[1].rsplit(".", 1)[-1], text)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "(section)" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


def _section(prefix: str, cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(tp):
            nested.append((f"{prefix}{f.name}.", tp))
            continue
        meaning = notes.get(f.name) or MEANINGS.get(f"{prefix}{f.name}", "")
        cells = [f"`{prefix}{f.name}`", f"`{_type(tp)}`", f"`{_default(f)}`", meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines = []
    if rows:
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        if doc.startswith(f"{cls.__name__}("):  # the dataclass's generated signature
            doc = ""
        lines += (
            [f"### `{prefix.rstrip('.') or '(top level)'}`", "", doc, ""]
            if doc
            else [f"### `{prefix.rstrip('.') or '(top level)'}`", ""]
        )
        lines += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for p, c in nested:
        lines += _section(p, c)
    return lines


def render() -> str:
    from geoalign.models.concept import ConceptConfig
    from geoalign.training.concept import CbmSection
    from geoalign.training.config import TrainConfig
    from geoalign.training.geosurge.config import GeoSurgeTrainConfig

    lines = [
        "# Training configuration reference",
        "",
        "Generated by `python scripts/config_reference.py` from the typed configs; do not edit.",
        "Every YAML key `geoalign train` reads, with its type, default and meaning. Unknown keys",
        "are an error. `base: other.yaml` inherits another file; `--set key=value` overrides.",
        "",
        "## GeoCLIP (`configs/geoclip/*.yaml`)",
        "",
        *_section("", TrainConfig),
        "## Concept-aware (`configs/concept/*.yaml`, `method: concept`)",
        "",
        "The GeoCLIP keys above, plus:",
        "",
        *_section("concept.", ConceptConfig),
        *_section("cbm.", CbmSection),
        "## GeoSURGE (`configs/geosurge/*.yaml`, `method: geosurge`)",
        "",
        *_section("", GeoSurgeTrainConfig),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
