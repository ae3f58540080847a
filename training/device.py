"""Device choice shared by the training commands."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda was asked for, but no CUDA device is available; Hint: use --device cpu"
        )
    if choice not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda, not {choice!r}")
    return torch.device(choice)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
