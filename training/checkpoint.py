"""Resumable training checkpoints without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CKPT_TENSORS = "checkpoint.safetensors"
CKPT_META = "checkpoint.json"


def save_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    """Write model, optimizer and RNG state plus ``meta``; atomic (tmp + rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{pid}.{k}"] = t.detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tmp = directory / (CKPT_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / CKPT_TENSORS)
    full_meta = {"meta": meta, "param_groups": opt["param_groups"]}
    tmpj = directory / (CKPT_META + ".tmp")
    tmpj.write_text(json.dumps(full_meta, indent=2))
    os.replace(tmpj, directory / CKPT_META)


def has_checkpoint(directory: Path) -> bool:
    return (directory / CKPT_TENSORS).is_file() and (directory / CKPT_META).is_file()


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta`` saved with the checkpoint in ``directory``, without loading any tensor."""
    if not has_checkpoint(directory):
        raise FileNotFoundError(f"no checkpoint in {directory}; Hint: drop --resume to start fresh")
    return json.loads((directory / CKPT_META).read_text())["meta"]


def changed_settings(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON-like configs (compared as JSON
    reads them back, so tuples and lists are alike)."""
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now else [prefix or "config"]
    out: list[str] = []
    for key in list(now) + [k for k in saved if k not in now]:
        out += changed_settings(saved.get(key), now.get(key), f"{prefix}{key}.")
    return [name.rstrip(".") for name in out]


def check_settings(where: Path, saved: Any, now: Any, noun: str = "run") -> None:
    """Refuse to resume state saved at ``where`` under settings ``saved`` (None: none recorded) in
    a ``noun`` (run, search) with settings ``now``."""
    if saved is None:
        raise ValueError(
            f"{where} records no settings (written before resumes were checked), so "
            f"it cannot be matched to this {noun}; Hint: drop --resume to start fresh"
        )
    changed = changed_settings(saved, now)
    if changed:
        raise ValueError(
            f"{where} was written by a {noun} with other settings ({', '.join(changed)}); "
            "Hint: drop --resume, or repeat the original flags"
        )


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG state; return the saved ``meta``."""
    if not has_checkpoint(directory):
        raise FileNotFoundError(f"no checkpoint in {directory}; Hint: drop --resume to start fresh")
    tensors = load_file(str(directory / CKPT_TENSORS))
    meta = json.loads((directory / CKPT_META).read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["meta"]
