"""The architecture a run builds from scratch: a preset of ``model.vit.PRESETS`` fitted to the
dataset's image size, channels and classes."""

from __future__ import annotations

from skipvit.model.config import ViTConfig
from skipvit.model.vit import PRESETS
from skipvit.training.data import DatasetInfo


def model_config(preset: str, info: DatasetInfo, **overrides) -> ViTConfig:
    """``preset`` on ``info``'s images; ``overrides`` that are not None replace preset values."""
    if preset not in PRESETS:
        raise SystemExit(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset])
    base.update(image_size=info.image_size, in_channels=info.channels, num_classes=info.num_classes)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ViTConfig(**base)
