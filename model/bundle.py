"""The bundle: the unit that training writes and the server loads.

```
bundle.json             architecture, dataset, weight sets, the front (a list of points)
weights/<set>.safetensors
manifest.json           sha256 of every other file; loading refuses any mismatch
front.png, REPORT.md
```
Weights are safetensors only; nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from skipvit.model.config import ViTConfig
from skipvit.model.exits import ExitSet, attach_exits
from skipvit.model.gates import SkipAgent
from skipvit.model.vit import AdaptiveViT, build_model

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE_JSON = "bundle.json"


class BundleError(Exception):
    """A bundle is missing, malformed or fails its manifest check."""


@dataclass
class Point:
    id: str
    method: str
    weights: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "weights": self.weights,
            "params": self.params,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        try:
            return cls(
                d["id"], d["method"], d["weights"], dict(d.get("params", {})), dict(d.get("metrics", {}))
            )
        except KeyError as e:
            raise BundleError(f"a point in {BUNDLE_JSON} lacks the field {e.args[0]!r}") from None


@dataclass
class Bundle:
    root: Path
    architecture: ViTConfig
    dataset: dict[str, Any]
    weight_sets: dict[str, str]  # name -> path relative to root
    front: list[Point]
    default_point: str

    # ---- queries
    def point(self, point_id: str | None = None) -> Point:
        pid = point_id or self.default_point
        for p in self.front:
            if p.id == pid:
                return p
        known = ", ".join(p.id for p in self.front)
        raise KeyError(f"no point {pid!r} in the bundle; known points: {known}")

    def load_weights(self, name: str) -> dict[str, Tensor]:
        if name not in self.weight_sets:
            raise BundleError(f"weight set {name!r} is not in {self.root / BUNDLE_JSON}")
        return load_file(str(self.root / self.weight_sets[name]))

    def build_model(self, weights: str, device: str | torch.device = "cpu") -> AdaptiveViT:
        model = build_model(self.architecture)
        state = self.load_weights(weights)
        if any(k.startswith("agent.") for k in state):
            cfg = self.architecture
            model.attach_agent(SkipAgent(cfg.dim, cfg.depth, SkipAgent.hidden_from_state(state)))
        try:
            exits = ExitSet.from_state(self.architecture, state)  # DyCE exit heads, when the set has them
        except ValueError as e:
            raise BundleError(f"weight set {weights!r}: {e}") from None
        if exits is not None:
            attach_exits(model, exits)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise BundleError(f"weight set {weights!r} lacks {len(missing)} tensors, e.g. {missing[0]}")
        if unexpected:
            raise BundleError(
                f"weight set {weights!r} has tensors the model does not know, e.g. {unexpected[0]}"
            )
        return model.to(device).eval()

    # ---- writing
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "architecture": self.architecture.to_dict(),
            "dataset": self.dataset,
            "weight_sets": self.weight_sets,
            "default_point": self.default_point,
            "front": [p.to_dict() for p in self.front],
        }

    def add_weight_set(self, name: str, state: dict[str, Tensor]) -> None:
        rel = f"weights/{name}.safetensors"
        (self.root / "weights").mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(self.root / rel))
        self.weight_sets[name] = rel

    def upsert_points(self, points: list[Point]) -> None:
        """Add points, replacing any with the same id."""
        ids = {p.id for p in points}
        self.front = [p for p in self.front if p.id not in ids] + list(points)

    def save(self) -> None:
        """Write bundle.json and the manifest (call after every other file is written)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / BUNDLE_JSON).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        write_manifest(self.root)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bundle_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    )


def write_manifest(root: Path) -> None:
    files = {rel: sha256_file(root / rel) for rel in _bundle_files(root)}
    (root / MANIFEST).write_text(json.dumps({"sha256": files}, indent=2) + "\n")


def verify_manifest(root: Path) -> None:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing; a bundle without a manifest is refused")
    try:
        expected: dict[str, str] = json.loads(mpath.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{mpath} is not a valid manifest ({e})") from None
    if BUNDLE_JSON not in expected:
        raise BundleError(f"{mpath} does not cover {BUNDLE_JSON}")
    for rel, digest in expected.items():
        path = root / rel
        if ".." in Path(rel).parts:
            raise BundleError(f"{mpath} names a path outside the bundle: {rel}")
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise BundleError(
                f"{path} does not match its sha256 in the manifest (tampered or truncated). "
                "Hint: re-copy the bundle, or re-run the command that wrote it."
            )
    extra = set(_bundle_files(root)) - set(expected)
    if extra:
        raise BundleError(f"{root} holds files the manifest does not list: {', '.join(sorted(extra))}")


def load_bundle(root: str | Path) -> Bundle:
    root = Path(root)
    if not (root / BUNDLE_JSON).is_file():
        raise BundleError(f"{root} is not a bundle: {BUNDLE_JSON} is missing")
    verify_manifest(root)
    try:
        meta = json.loads((root / BUNDLE_JSON).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise BundleError(
                f"{root / BUNDLE_JSON}: format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        bundle = Bundle(
            root=root,
            architecture=ViTConfig.from_dict(meta["architecture"]),
            dataset=meta["dataset"],
            weight_sets=dict(meta["weight_sets"]),
            front=[Point.from_dict(p) for p in meta["front"]],
            default_point=meta["default_point"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{root / BUNDLE_JSON} is malformed: {e}") from None
    for p in bundle.front:
        if p.weights not in bundle.weight_sets:
            raise BundleError(f"point {p.id!r} uses weight set {p.weights!r}, which the bundle lacks")
    bundle.point(bundle.default_point)
    return bundle


def new_bundle(root: str | Path, cfg: ViTConfig, dataset: dict[str, Any]) -> Bundle:
    return Bundle(Path(root), cfg, dataset, {}, [], default_point="static")
