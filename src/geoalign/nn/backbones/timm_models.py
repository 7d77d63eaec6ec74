"""timm models as backbones (optional dependency: `pip install timm`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoalign.data.transforms import PreprocessConfig
from geoalign.errors import GeoalignError
from geoalign.nn.backbones.base import BackboneOutput, ImageBackbone, tokens_from_features
from geoalign.nn.backbones.hub import (
    hf_hub_cache_dir,
    missing_weights,
    offline_mode,
    weights_file_not_found,
)


def import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise GeoalignError("timm backbones need the `timm` package: pip install timm") from err
    return timm


class TimmBackbone(ImageBackbone):
    """pooled = timm's pre-logits features (num_classes=0); tokens = `forward_features` output."""

    def __init__(
        self, model: nn.Module, *, name: str, preprocess: PreprocessConfig, frozen: bool = True
    ) -> None:
        embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        super().__init__(name=name, embed_dim=embed_dim, preprocess=preprocess)
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        if frozen:
            self.freeze()

    @property
    def token_dim(self) -> int:
        return int(self.model.num_features)

    def _encode(self, pixel_values: Tensor, with_tokens: bool) -> BackboneOutput:
        features = self.model.forward_features(pixel_values)
        pooled = self.model.forward_head(features, pre_logits=True)
        tokens = None
        if with_tokens:
            channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
            tokens = tokens_from_features(features, channels_last)
        return BackboneOutput(pooled=pooled, tokens=tokens)

    def blocks(self) -> Sequence[nn.Module]:
        for attr in ("blocks", "stages", "layers"):
            found = getattr(self.model, attr, None)
            if isinstance(found, nn.Sequential | nn.ModuleList):
                return list(found)
        return list(self.model.children())

    def head_modules(self) -> Sequence[nn.Module]:
        found = (getattr(self.model, a, None) for a in ("norm", "fc_norm", "head"))
        return [m for m in found if isinstance(m, nn.Module)]


def preprocess_from_timm(model: nn.Module) -> PreprocessConfig:
    timm = import_timm()
    cfg = timm.data.resolve_data_config(model=model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return PreprocessConfig(
        image_size=size,
        resize_size=math.floor(size / crop_pct),
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


def load_timm_backbone(
    model_name: str,
    weights: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    frozen: bool = True,
    local_files_only: bool | None = None,
) -> TimmBackbone:
    """`weights`: a timm-format weights file; None downloads the timm hub weights unless offline."""
    timm = import_timm()
    if not timm.is_model(model_name.split(".")[0]):
        raise GeoalignError(f"unknown timm model {model_name!r}; see timm.list_models()")
    overlay = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise weights_file_not_found("timm", model_name, path, "model.safetensors")
        overlay = {"file": str(path)}
    if weights is None and offline_mode(local_files_only):
        overlay = {"file": str(_cached_hub_file(timm, model_name))}  # never touch the network
    try:
        model = timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=0,
            cache_dir=str(hf_hub_cache_dir()),
        )
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        if weights is not None:
            raise GeoalignError(
                f"{weights}: cannot load into timm model {model_name} ({err})"
            ) from err
        raise _missing(model_name, err) from err
    name = f"timm:{model_name}" + (f"@{weights}" if weights else "")
    backbone = TimmBackbone(
        model.eval(), name=name, preprocess=preprocess_from_timm(model), frozen=frozen
    )
    return backbone.to(device=device, dtype=dtype)


def _missing(model_name: str, cause: BaseException | None) -> Exception:
    return missing_weights(
        f"timm weights for {model_name}",
        [f"Hugging Face cache {hf_hub_cache_dir()}"],
        [
            f"pass a weights file: timm:{model_name}@/path/to/model.safetensors",
            'on a machine with internet: python -c "import timm; timm.create_model('
            f"'{model_name}', pretrained=True)\", then copy its Hugging Face cache here "
            "(HF_HUB_CACHE)",
            "if this machine has internet, unset HF_HUB_OFFLINE so the weights download",
        ],
        cause,
    )


def _cached_hub_file(timm: Any, model_name: str) -> Path:
    """The weights file of a timm model in the local Hugging Face cache (offline mode)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for file_name in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if not file_name:
                continue
            found = try_to_load_from_cache(repo, file_name, cache_dir=hf_hub_cache_dir())
            if isinstance(found, str):
                return Path(found)
    raise _missing(model_name, None)
