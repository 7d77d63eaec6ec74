"""open_clip image towers as backbones (optional dependency: `pip install open_clip_torch`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoalign.data.transforms import PreprocessConfig
from geoalign.errors import GeoalignError
from geoalign.nn.backbones.base import BackboneOutput, ImageBackbone
from geoalign.nn.backbones.hub import (
    hf_hub_cache_dir,
    looks_like_path,
    missing_weights,
    weights_file_not_found,
)


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise GeoalignError(
            "open_clip backbones need the `open_clip_torch` package: pip install open_clip_torch"
        ) from err
    return open_clip


class OpenClipBackbone(ImageBackbone):
    """pooled = `encode_image` (projected); tokens = last block output, CLS first (ViT towers)."""

    def __init__(
        self, visual: nn.Module, *, name: str, preprocess: PreprocessConfig, frozen: bool = True
    ) -> None:
        super().__init__(name=name, embed_dim=int(visual.output_dim), preprocess=preprocess)
        self.visual = visual
        self._is_vit = type(visual).__name__ == "VisionTransformer"
        self.num_prefix_tokens = 1 if self._is_vit else 0
        if frozen:
            self.freeze()

    @property
    def token_dim(self) -> int | None:
        return int(self.visual.transformer.width) if self._is_vit else None

    def _encode(self, pixel_values: Tensor, with_tokens: bool) -> BackboneOutput:
        if not (with_tokens and self._is_vit):
            return BackboneOutput(pooled=self.visual(pixel_values))
        out = self.visual.forward_intermediates(
            pixel_values, indices=1, output_fmt="NLC", output_extra_tokens=True
        )
        tokens = torch.cat(
            [out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1
        )
        return BackboneOutput(pooled=out["image_features"], tokens=tokens)

    def blocks(self) -> Sequence[nn.Module]:
        if self._is_vit:
            return list(self.visual.transformer.resblocks)
        return list(self.visual.children())

    def head_modules(self) -> Sequence[nn.Module]:
        return [self.visual.ln_post] if self._is_vit else []


def load_open_clip_backbone(
    model_name: str,
    weights: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    frozen: bool = True,
    local_files_only: bool | None = None,
) -> OpenClipBackbone:
    """`weights`: a checkpoint file or an open_clip pretrained tag (e.g. laion2b_s34b_b79k).

    Only the image tower is kept; the text tower is dropped right after loading.
    """
    open_clip = import_open_clip()
    if model_name not in open_clip.list_models():
        raise GeoalignError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    if weights is None:
        raise GeoalignError(
            f"open_clip:{model_name} needs weights: open_clip:{model_name}@/path/to/checkpoint "
            f"or a pretrained tag, one of {open_clip.list_pretrained_tags_by_model(model_name)}"
        )
    if looks_like_path(weights) and not Path(weights).expanduser().is_file():
        raise weights_file_not_found(
            "open_clip", model_name, Path(weights).expanduser(), "open_clip_model.bin"
        )
    pretrained = str(Path(weights).expanduser()) if looks_like_path(weights) else weights
    try:
        model = open_clip.create_model(
            model_name, pretrained=pretrained, cache_dir=str(hf_hub_cache_dir())
        )
    except RuntimeError as err:
        message = str(err).lower()
        if looks_like_path(weights) or ("pretrained" in message and "not found" in message):
            first = str(err).strip().splitlines()[0]
            raise GeoalignError(f"open_clip:{model_name}@{weights}: {first}") from err
        raise _missing(model_name, weights, err) from err
    except (OSError, ValueError) as err:
        raise _missing(model_name, weights, err) from err
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    size = preprocess_cfg.get("size", 224)
    size = int(size[0] if isinstance(size, list | tuple) else size)
    if preprocess_cfg.get("resize_mode", "shortest") != "shortest":
        raise GeoalignError(
            f"open_clip model {model_name} resizes with mode {preprocess_cfg['resize_mode']!r}; "
            "only 'shortest' (resize + centre crop) is supported"
        )
    preprocess = PreprocessConfig(
        image_size=size,
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        mean=tuple(preprocess_cfg.get("mean")),
        std=tuple(preprocess_cfg.get("std")),
    )
    visual = model.visual
    del model  # drop the text tower
    backbone = OpenClipBackbone(
        visual.eval(),
        name=f"open_clip:{model_name}@{weights}",
        preprocess=preprocess,
        frozen=frozen,
    )
    return backbone.to(device=device, dtype=dtype)


def _missing(model_name: str, weights: str, cause: BaseException) -> Exception:
    return missing_weights(
        f"open_clip weights {weights!r} for {model_name}",
        [f"{weights}" if looks_like_path(weights) else f"Hugging Face cache {hf_hub_cache_dir()}"],
        [
            f"pass a checkpoint file: open_clip:{model_name}@/path/to/open_clip_model.bin",
            'on a machine with internet: python -c "import open_clip; open_clip.create_model('
            f"'{model_name}', pretrained='{weights}')\", then copy its Hugging Face cache here",
        ],
        cause,
    )
