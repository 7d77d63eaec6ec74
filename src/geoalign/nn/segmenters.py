"""ADE20K semantic segmenters behind one interface (`Segmenter`), built from a spec string.

GeoSURGE fuses each photo with its ADE20K semantic segmentation map from OneFormer; SegFormer-B0 is
a much lighter stand-in with the same 150 classes in the same order (0 = wall ... 149 = flag).

Specs accepted by `load_segmenter`:
- ``oneformer-ade20k``: shi-labs/oneformer_ade20k_swin_large (the paper's segmenter);
- ``segformer-ade20k``: nvidia/segformer-b0-finetuned-ade-512-512;
- ``hf:<repo id or local folder>``: any transformers OneFormer or SegFormer checkpoint.

`segmenter(images)` takes RGB images as uint8 [B, 3, H, W] (or float in [0, 1]) and returns uint8
label maps [B, H, W] (or `size`). Preprocessing runs in torch on the model's device, batched: resize
(SegFormer: to a square, as its processor does; OneFormer: shortest side, as its processor does),
rescale, normalise with the checkpoint's mean/std. The processors resize with PIL, so maps can differ
from theirs on a few boundary pixels. Post-processing is the processors' own rule, batched: SegFormer
upsamples its logits bilinearly; OneFormer combines query class probabilities (without the null
class) with the sigmoid query masks, then upsamples; argmax over classes.

Nothing is downloaded at import; `load_segmenter` downloads only when online and not offline.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoalign.errors import GeoalignError
from geoalign.nn.backbones.hub import (
    CheckpointKind,
    HfCheckpoint,
    hf_weights_not_found,
    quiet_transformers,
    read_preprocessor_config,
    resolve_checkpoint,
)

Kind = Literal["segformer", "oneformer"]

ALIASES: dict[str, str] = {
    "oneformer-ade20k": "hf:shi-labs/oneformer_ade20k_swin_large",
    "segformer-ade20k": "hf:nvidia/segformer-b0-finetuned-ade-512-512",
}
DEFAULT_SEGMENTER = "oneformer-ade20k"
SPEC_FORMS = ("oneformer-ade20k", "segformer-ade20k", "hf:<repo id or local folder>")
# env var that points a named checkpoint at a local folder (takes precedence over the HF cache)
PATH_ENV: dict[str, str] = {
    "shi-labs/oneformer_ade20k_swin_large": "GEOALIGN_ONEFORMER_PATH",
    "nvidia/segformer-b0-finetuned-ade-512-512": "GEOALIGN_SEGFORMER_PATH",
}
SEGMENTER_CHECKPOINT = CheckpointKind(
    what="segmenter weights",
    files="config.json, the model weights and preprocessor_config.json (a hub snapshot or "
    "`save_pretrained` output)",
    local_spec="segmenter spec `hf:{path}`",
    example_repo="nvidia/segformer-b0-finetuned-ade-512-512",
    path_env=PATH_ENV,
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Input sizes the published checkpoints were evaluated at (used when no preprocessor file is found).
DEFAULT_INPUT_SIZE: dict[str, int] = {"segformer": 512, "oneformer": 640}
ONEFORMER_TASK = "the task is semantic"  # the text OneFormerProcessor builds for task "semantic"


class Segmenter(nn.Module):
    """A frozen semantic segmenter: RGB images -> class index maps (uint8)."""

    def __init__(
        self,
        model: nn.Module,
        kind: Kind,
        *,
        name: str,
        input_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        task_inputs: Tensor | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("segformer", "oneformer"):
            raise ValueError(f"segmenter kind must be segformer or oneformer, got {kind!r}")
        if kind == "oneformer" and task_inputs is None:
            raise ValueError("a OneFormer segmenter needs the tokenised task text (task_inputs)")
        self.model = model.eval().requires_grad_(False)
        self.kind = kind
        self.name = name
        self.input_size = int(input_size or DEFAULT_INPUT_SIZE[kind])
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if task_inputs is not None:
            self.register_buffer("task_inputs", task_inputs.long().view(1, -1), persistent=False)
        else:
            self.task_inputs = None

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> Segmenter:
        return super().train(False)  # always frozen, always in eval mode

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind}, input_size={self.input_size}"

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        name: str = "segmenter-random",
        input_size: int | None = None,
        task_inputs: Tensor | None = None,
    ) -> Segmenter:
        """Randomly initialised segmenter from a `SegformerConfig` / `OneFormerConfig` (tests)."""
        kind = _kind_of(config)
        if kind == "segformer":
            from transformers import SegformerForSemanticSegmentation

            model: nn.Module = SegformerForSemanticSegmentation(config)
        else:
            from transformers import OneFormerForUniversalSegmentation

            model = OneFormerForUniversalSegmentation(config)
        return cls(model, kind, name=name, input_size=input_size, task_inputs=task_inputs)

    # -- inference ------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B,3,H,W] or float [0,1] -> the model's normalised input."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise GeoalignError(
                f"segmenter {self.name!r} expects RGB images [B, 3, H, W], got {tuple(images.shape)}"
            )
        x = images.to(self.device)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        h, w = x.shape[-2:]
        if self.kind == "segformer":
            size = (self.input_size, self.input_size)
        else:
            scale = self.input_size / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self.mean) / self.std).to(self.dtype)

    def class_scores(self, pixel_values: Tensor) -> Tensor:
        """Per-class scores [B, num_labels, h, w] at the model's output resolution (float32)."""
        if self.kind == "segformer":
            return self.model(pixel_values=pixel_values).logits.float()
        task = self.task_inputs.to(pixel_values.device).expand(pixel_values.shape[0], -1)
        out = self.model(pixel_values=pixel_values, task_inputs=task)
        classes = out.class_queries_logits.float().softmax(-1)[..., :-1]  # drop the null class
        masks = out.masks_queries_logits.float().sigmoid()
        return torch.einsum("bqc,bqhw->bchw", classes, masks)

    @torch.inference_mode()
    def forward(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Label maps uint8 [B, H, W] at `size` (default: the input images' size)."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        target = tuple(size) if size is not None else tuple(images.shape[-2:])
        scores = self.class_scores(self.preprocess(images))
        scores = F.interpolate(scores, size=target, mode="bilinear", align_corners=False)
        if self.num_labels > 255:
            raise GeoalignError(f"{self.num_labels} classes do not fit uint8 label maps")
        return scores.argmax(dim=1).to(torch.uint8)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        name: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
    ) -> Segmenter:
        """Load a OneFormer or SegFormer checkpoint from a local folder or a hub repo id."""
        from transformers import AutoConfig

        ckpt = resolve_checkpoint(name_or_path, SEGMENTER_CHECKPOINT, local_files_only)
        source, common = ckpt.source, ckpt.load_kwargs
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(source, **common)
                kind = _kind_of(config)
                if kind == "segformer":
                    from transformers import SegformerForSemanticSegmentation as Model
                else:
                    from transformers import OneFormerForUniversalSegmentation as Model
                model = Model.from_pretrained(source, dtype=dtype, **common)
                task_inputs = _task_tokens(source, config, common) if kind == "oneformer" else None
        except (OSError, ValueError) as err:
            raise hf_weights_not_found(ckpt, err) from err
        size, mean, std = _read_preprocess(ckpt, kind)
        seg = cls(
            model,
            kind,
            name=name or str(name_or_path),
            input_size=size,
            mean=mean,
            std=std,
            task_inputs=task_inputs,
        )
        return seg.to(device)


def _kind_of(config: Any) -> Kind:
    model_type = getattr(config, "model_type", None)
    if model_type not in ("segformer", "oneformer"):
        raise GeoalignError(
            f"unsupported segmenter architecture {model_type!r}: use a OneFormer or SegFormer "
            "semantic segmentation checkpoint"
        )
    return model_type


def _task_tokens(source: str, config: Any, common: dict[str, Any]) -> Tensor:
    """Token ids of "the task is semantic", padded like OneFormerProcessor (ids x mask)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    length = int(getattr(config, "task_seq_len", 77))
    tok = tokenizer(ONEFORMER_TASK, padding="max_length", max_length=length, truncation=True)
    return torch.tensor(tok["input_ids"]) * torch.tensor(tok["attention_mask"])


def _read_preprocess(
    ckpt: HfCheckpoint, kind: Kind
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) from preprocessor_config.json, else the published defaults."""
    default = (DEFAULT_INPUT_SIZE[kind], IMAGENET_MEAN, IMAGENET_STD)
    raw = read_preprocessor_config(ckpt)
    if raw is None:  # absent or unreachable: the defaults are the checkpoints' documented values
        return default
    size = raw.get("size", default[0])
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height", default[0]))
    mean = [float(v) for v in raw.get("image_mean", IMAGENET_MEAN)]
    std = [float(v) for v in raw.get("image_std", IMAGENET_STD)]
    if max(mean) > 1.0:  # OneFormer stores them in 0..255 units
        mean, std = [v / 255.0 for v in mean], [v / 255.0 for v in std]
    return int(size), tuple(mean), tuple(std)


def parse_spec(spec: str) -> str:
    """'segformer-ade20k' -> 'nvidia/segformer-b0-finetuned-ade-512-512'; 'hf:x' -> 'x'."""
    full = ALIASES.get(spec.strip(), spec.strip())
    kind, sep, rest = full.partition(":")
    if not sep or kind != "hf" or not rest:
        raise GeoalignError(f"unknown segmenter spec {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
    return rest


def load_segmenter(
    spec: str = DEFAULT_SEGMENTER,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> Segmenter:
    """Build a pretrained segmenter from its spec (see the module docstring).

    `local_files_only`: None follows HF_HUB_OFFLINE; True never downloads. Missing weights raise
    `WeightsNotFoundError` naming every place searched and how to provide the weights.
    """
    return Segmenter.from_pretrained(
        parse_spec(spec), name=spec, device=device, dtype=dtype, local_files_only=local_files_only
    )
