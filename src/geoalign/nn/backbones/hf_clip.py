"""CLIP vision tower from transformers: the image half of CLIP only, never the text tower.

`CLIPVisionModelWithProjection` loads just the vision weights and the visual projection out of a
full CLIP checkpoint (safetensors are read lazily, the text weights are never materialised), so
ViT-L/14 costs 0.3 B parameters instead of 0.43 B.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoalign.data.transforms import CLIP_MEAN, CLIP_STD, PreprocessConfig
from geoalign.nn.backbones.base import BackboneOutput, ImageBackbone
from geoalign.nn.backbones.converted_load import assign_state, has_meta_tensors
from geoalign.nn.backbones.hub import (
    CheckpointKind,
    HfCheckpoint,
    hf_weights_not_found,
    quiet_transformers,
    read_preprocessor_config,
    resolve_checkpoint,
)

# env var that points a named checkpoint at a local folder (takes precedence over the HF cache)
CLIP_PATH_ENV: dict[str, str] = {
    "openai/clip-vit-large-patch14": "GEOALIGN_CLIP_PATH",
    "openai/clip-vit-large-patch14-336": "GEOALIGN_CLIP336_PATH",
}
CLIP_CHECKPOINT = CheckpointKind(
    what="CLIP weights",
    files="config.json + model.safetensors (from `save_pretrained` or a hub snapshot)",
    local_spec="backbone spec `hf:{path}`",
    example_repo="openai/clip-vit-large-patch14",
    path_env=CLIP_PATH_ENV,
)

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class ClipBackbone(ImageBackbone):
    """OpenAI-style CLIP vision transformer.

    pooled = projected image embedding (``image_embeds``, 768-d for ViT-L/14) as used by GeoCLIP;
    tokens = last encoder layer's hidden states [B, 1 + patches, hidden] with CLS first, before the
    final layer norm and projection, which is what GeoSURGE's semantic fusion consumes.
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str = "clip",
        preprocess: PreprocessConfig | None = None,
        frozen: bool = True,
    ) -> None:
        config = model.config
        super().__init__(
            name=name,
            embed_dim=int(config.projection_dim),
            preprocess=preprocess or PreprocessConfig(image_size=int(config.image_size)),
        )
        self.model = model
        self.num_prefix_tokens = 1
        if frozen:
            self.freeze()

    @property
    def token_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        projection_dim: int | None = None,
        name: str = "clip-random",
        frozen: bool = True,
    ) -> ClipBackbone:
        """Randomly initialised tower from a `CLIPVisionConfig` (tests, training from scratch)."""
        from transformers import CLIPVisionModelWithProjection

        if projection_dim is not None:
            config.projection_dim = projection_dim
        return cls(CLIPVisionModelWithProjection(config).eval(), name=name, frozen=frozen)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        name: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        frozen: bool = True,
        local_files_only: bool | None = None,
    ) -> ClipBackbone:
        """Load from a local folder or a hub repo id (download allowed unless offline).

        For known repo ids, a folder named by an environment variable (GEOALIGN_CLIP_PATH for
        openai/clip-vit-large-patch14) is used instead of the hub cache when set.
        """
        from transformers import CLIPVisionModelWithProjection

        ckpt = resolve_checkpoint(name_or_path, CLIP_CHECKPOINT, local_files_only)
        # float32: transformers maps the safetensors file, no copy. Other dtypes: converted
        # tensor by tensor (see converted_load), else transformers as the fallback.
        model = _load_converted(ckpt, dtype) if dtype != torch.float32 else None
        try:
            if model is None:
                with quiet_transformers():
                    model = CLIPVisionModelWithProjection.from_pretrained(
                        ckpt.source, dtype=dtype, **ckpt.load_kwargs
                    )
        except (OSError, ValueError) as err:
            raise hf_weights_not_found(ckpt, err) from err
        preprocess = _read_preprocess(ckpt, model.config)
        backbone = cls(
            model.eval(), name=name or str(name_or_path), preprocess=preprocess, frozen=frozen
        )
        return backbone.to(device)

    def _encode(self, pixel_values: Tensor, with_tokens: bool) -> BackboneOutput:
        out = self.model(pixel_values=pixel_values)
        return BackboneOutput(
            pooled=out.image_embeds, tokens=out.last_hidden_state if with_tokens else None
        )

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.vision_model.encoder.layers)

    def head_modules(self) -> Sequence[nn.Module]:
        return [self.model.vision_model.post_layernorm, self.model.visual_projection]


def _single_safetensors(ckpt: HfCheckpoint) -> Path | None:
    """The checkpoint's one model.safetensors on this disk (local folder or hub cache), if any."""
    if ckpt.is_local:
        path = Path(ckpt.source) / "model.safetensors"
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ckpt.source, "model.safetensors", cache_dir=ckpt.cache_dir)
    return Path(found) if isinstance(found, str) else None


def _load_converted(ckpt: HfCheckpoint, dtype: torch.dtype) -> Any | None:
    """The vision tower in `dtype` with one converted tensor in memory at a time; None when the
    checkpoint is not one local safetensors file this can read (transformers loads it then)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = _single_safetensors(ckpt)
    if path is None:
        return None
    try:
        with quiet_transformers():
            config = CLIPVisionConfig.from_pretrained(ckpt.source, **ckpt.load_kwargs)
        config.dtype = dtype
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
        assign_state(model, path, dtype)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # unusual layout or names: transformers knows more conversions
    emb = model.vision_model.embeddings  # its one non-persistent buffer, not in the file
    positions = torch.arange(emb.num_positions).expand((1, -1))
    emb.register_buffer("position_ids", positions, persistent=False)
    return None if has_meta_tensors(model) else model


def _read_preprocess(ckpt: HfCheckpoint, config: Any) -> PreprocessConfig:
    """The checkpoint's preprocessor_config.json, else CLIP's defaults at the model's image size."""
    default = PreprocessConfig(image_size=int(config.image_size), mean=CLIP_MEAN, std=CLIP_STD)
    raw = read_preprocessor_config(ckpt)
    if raw is None:  # absent or unreachable: the defaults are OpenAI CLIP's own values
        return default
    size = raw.get("size", default.image_size)
    crop = raw.get("crop_size", size)
    shortest = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop_side = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    if not raw.get("do_center_crop", True):
        crop_side = shortest
    return PreprocessConfig(
        image_size=int(crop_side or default.image_size),
        resize_size=int(shortest) if shortest and int(shortest) != int(crop_side) else None,
        interpolation=_PIL_RESAMPLE.get(int(raw.get("resample", 3)), "bicubic"),
        mean=tuple(raw.get("image_mean", CLIP_MEAN)),
        std=tuple(raw.get("image_std", CLIP_STD)),
    )
