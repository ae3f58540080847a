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
    """bf16 autocast on CUDA, nothing on CPU. For training forwards and backwards only: figures
    that go into a bundle, or choices made on them, are measured under ``full_precision``."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device | str):
    """fp32, even inside an enclosing autocast: the precision the service serves in
    (service/engine.py), so a point's metrics, and the searches' selections, are what it serves."""
    return torch.autocast(torch.device(device).type, enabled=False)
