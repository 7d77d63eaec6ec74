"""Training (needs the `train` extra: lightning). Inference code never imports this package."""

from geoalign.training.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
