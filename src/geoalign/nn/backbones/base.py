"""The one interface every image backbone (HF CLIP, open_clip, timm, torchvision) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from geoalign.data.transforms import Backend, ImageTransform, PreprocessConfig, build_transform
from geoalign.errors import GeoalignError

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Inference precisions: fp32 runs the weights as they are; bf16/fp16 run under autocast."""


@dataclass
class BackboneOutput:
    """`pooled`: [B, embed_dim] image embedding; `tokens`: [B, T, token_dim] or None.

    Tokens start with `num_prefix_tokens` prefix tokens (the CLS token for ViTs), then one token
    per patch (ViT) or per feature-map cell (CNN), row-major.
    """

    pooled: Tensor
    tokens: Tensor | None = None


class ImageBackbone(nn.Module, ABC):
    """A pretrained image encoder, frozen by default, with the preprocessing it was trained with.

    - ``backbone(pixel_values)`` -> pooled embedding [B, embed_dim] (not L2-normalised);
    - ``backbone.forward_tokens(pixel_values)`` -> tokens [B, T, token_dim];
    - ``backbone.encode(pixel_values)`` -> both from one pass;
    - ``backbone.transform(image)`` -> float32 [3, S, S] for an RGB PIL image or uint8 tensor.

    Inputs are moved to the backbone's device and dtype, so float32 pixel values feed a bf16 model.
    A frozen backbone stays in eval mode even when a parent module calls ``.train()``.
    """

    def __init__(self, *, name: str, embed_dim: int, preprocess: PreprocessConfig) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = embed_dim
        self.preprocess = preprocess
        self.num_prefix_tokens = 0
        self.autocast_dtype: torch.dtype | None = None  # None: plain fp32, bit-identical
        self.channels_last = False

    # -- to implement -----------------------------------------------------------------------

    @abstractmethod
    def _encode(self, pixel_values: Tensor, with_tokens: bool) -> BackboneOutput:
        """Run the model on prepared pixel values (right device, dtype and shape)."""

    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The model's stages/blocks in forward order (for partial unfreezing)."""

    def head_modules(self) -> Sequence[nn.Module]:
        """Modules after the last block that produce the pooled output (norm, projection)."""
        return []

    @property
    def token_dim(self) -> int | None:
        """Channel size of `forward_tokens`, or None when the backbone exposes no tokens."""
        return None

    # -- shared behaviour -------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @cached_property
    def transform(self) -> ImageTransform:
        """Evaluation preprocessing matching this backbone (tensor backend)."""
        return build_transform(self.preprocess)

    def build_transform(self, backend: Backend = "tensor") -> ImageTransform:
        return build_transform(self.preprocess, backend)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def configure_inference(
        self, *, precision: str = "fp32", channels_last: bool = False
    ) -> ImageBackbone:
        """The GPU fast path: autocast precision and channels-last memory format.

        bf16 (CPU or CUDA) and fp16 (CUDA only) run the forward under `torch.autocast` and
        return float32 outputs; fp32 leaves the forward untouched. channels_last stores conv
        weights and inputs NHWC, which cuDNN runs faster for conv nets (no effect on ViTs).
        Attention already runs through SDPA: transformers (CLIP), timm and open_clip pick
        `scaled_dot_product_attention` by default.
        """
        if precision not in PRECISIONS:
            raise GeoalignError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        if precision == "fp16" and self.device.type != "cuda":
            raise GeoalignError(
                f"precision fp16 needs a CUDA device (the backbone is on {self.device}); "
                "use bf16 or fp32 on this device"
            )
        self.autocast_dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    def encode(self, pixel_values: Tensor, *, with_tokens: bool = True) -> BackboneOutput:
        pixel_values = self._prepare(pixel_values)
        if self.autocast_dtype is None:
            return self._encode(pixel_values, with_tokens)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            out = self._encode(pixel_values, with_tokens)
        tokens = out.tokens.float() if out.tokens is not None else None
        return BackboneOutput(pooled=out.pooled.float(), tokens=tokens)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.encode(pixel_values, with_tokens=False).pooled

    def forward_tokens(self, pixel_values: Tensor) -> Tensor:
        tokens = self.encode(pixel_values, with_tokens=True).tokens
        if tokens is None:
            raise GeoalignError(f"backbone {self.name!r} does not expose patch tokens")
        return tokens

    def _prepare(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.dim() == 3:
            pixel_values = pixel_values.unsqueeze(0)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise GeoalignError(
                f"backbone {self.name!r} expects pixel values [B, 3, H, W] (use backbone.transform "
                f"on images), got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise GeoalignError(
                f"backbone {self.name!r} expects preprocessed float pixel values, got "
                f"{pixel_values.dtype}; run backbone.transform on the images first"
            )
        # (non_blocking: a pinned batch's copy to the GPU overlaps; a no-op on the CPU)
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    def freeze(self) -> ImageBackbone:
        """No parameter trains; eval mode (kept through later `.train()` calls)."""
        self.requires_grad_(False)
        return self.eval()

    def unfreeze(self, last_blocks: int | None = None) -> ImageBackbone:
        """Train everything (None) or only the last `last_blocks` blocks plus the head after them.

        GeoSURGE fine-tunes the last transformer block of CLIP: ``unfreeze(last_blocks=1)``.
        """
        if last_blocks is None:
            self.requires_grad_(True)
        else:
            blocks = list(self.blocks())
            if not 0 <= last_blocks <= len(blocks):
                raise ValueError(f"last_blocks must be in 0..{len(blocks)}, got {last_blocks}")
            self.requires_grad_(False)
            chosen = blocks[len(blocks) - last_blocks :] if last_blocks else []
            for module in [*chosen, *(self.head_modules() if last_blocks else [])]:
                module.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> ImageBackbone:
        return super().train(mode and not self.frozen)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, "
            f"frozen={self.frozen}"
        )


def tokens_from_features(features: Tensor, channels_last: bool = False) -> Tensor:
    """[B, C, H, W] (or [B, H, W, C]) feature map -> [B, H*W, C] tokens; [B, T, C] passes."""
    if features.dim() == 3:
        return features
    if features.dim() != 4:
        raise ValueError(f"cannot turn features of shape {tuple(features.shape)} into tokens")
    if channels_last:
        return features.flatten(1, 2)
    return features.flatten(2).transpose(1, 2)
