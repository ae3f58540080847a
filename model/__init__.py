"""The adaptive-depth ViT, its execution policies and the bundle format.

Shared by ``training/`` (which writes bundles) and ``service/`` (which serves them).
"""

from skipvit.model.config import ViTConfig
from skipvit.model.policy import EXIT, RUN, SKIP, ExecutionPolicy, StaticPolicy
from skipvit.model.vit import AdaptiveViT, ForwardOutput, build_model

__all__ = [
    "EXIT",
    "RUN",
    "SKIP",
    "AdaptiveViT",
    "ExecutionPolicy",
    "ForwardOutput",
    "StaticPolicy",
    "ViTConfig",
    "build_model",
]
