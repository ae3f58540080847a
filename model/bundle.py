"""The bundle: the unit that training writes and the server loads.

```
bundle.json             architecture, dataset, weight sets, the front (a list of points)
weights/<set>.safetensors
manifest.json           sha256 of every other file; loading refuses any mismatch
front.png, REPORT.md
```
Weights are safetensors only; nothing in a bundle is ever unpickled.

bundle.json's ``preprocess`` section is optional: only a bundle whose model came from elsewhere
(``skipvit import hf``) has one, and a bundle without it reads and writes as it always did
(``model.preprocess``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from skipvit.model.config import ViTConfig
from skipvit.model.preprocess import Preprocess, PreprocessError
from skipvit.model.vit import AdaptiveViT
from skipvit.model.weights import WeightsError, assemble, check_header

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
    preprocess: Preprocess | None = None  # the optional section (model.preprocess); None: Preprocess()

    # ---- queries
    def point(self, point_id: str | None = None) -> Point:
        pid = point_id or self.default_point
        for p in self.front:
            if p.id == pid:
                return p
        known = ", ".join(p.id for p in self.front)
        raise KeyError(f"no point {pid!r} in the bundle; known points: {known}")

    def weights_path(self, name: str) -> Path:
        if name not in self.weight_sets:
            raise BundleError(f"weight set {name!r} is not in {self.root / BUNDLE_JSON}")
        return inside(self.root, self.weight_sets[name], f"weight set {name!r}")

    def check_weights(self, name: str) -> None:
        """Refuse weight set ``name`` unless its header holds exactly the tensors the architecture
        implies (``model.weights.check_header``): reads the header, allocates nothing."""
        try:
            check_header(self.architecture, self.weights_path(name))
        except WeightsError as e:
            raise BundleError(f"weight set {name!r}: {e}") from None

    def load_weights(self, name: str) -> dict[str, Tensor]:
        return load_file(str(self.weights_path(name)))

    def build_model(self, weights: str, device: str | torch.device = "cpu") -> AdaptiveViT:
        self.check_weights(weights)  # before the model is built: a wrong architecture costs nothing
        state = self.load_weights(weights)
        model = assemble(self.architecture, state)
        model.load_state_dict(state)
        return model.to(device).eval()

    # ---- writing
    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": FORMAT_VERSION,
            "architecture": self.architecture.to_dict(),
            "dataset": self.dataset,
            "weight_sets": self.weight_sets,
            "default_point": self.default_point,
            "front": [p.to_dict() for p in self.front],
        }
        if self.preprocess is not None:
            d["preprocess"] = self.preprocess.to_dict()
        return d

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
    """Every file of the bundle but its manifest, dot-files included."""
    return sorted(
        rel for p in root.rglob("*") if p.is_file() and (rel := p.relative_to(root).as_posix()) != MANIFEST
    )


def inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refused unless it stays inside the bundle: no absolute path, no ``..``,
    no symlink that leads out of it."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or "\\" in rel:
        raise BundleError(
            f"{what} names {rel!r}, which is not a path inside the bundle; "
            "Hint: bundle paths are relative, like weights/static.safetensors"
        )
    full = root / path
    if not full.resolve().is_relative_to(root.resolve()):
        raise BundleError(
            f"{what} names {rel!r}, a link that leads out of the bundle ({full.resolve()}); "
            "Hint: copy the file into the bundle instead of linking it"
        )
    return full


def write_manifest(root: Path) -> None:
    files = {rel: sha256_file(root / rel) for rel in _bundle_files(root)}
    (root / MANIFEST).write_text(json.dumps({"sha256": files}, indent=2) + "\n")


def verify_manifest(root: Path) -> set[str]:
    """Check every file against the manifest; return the files it lists (normalised paths)."""
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing; a bundle without a manifest is refused")
    try:
        expected: dict[str, str] = json.loads(mpath.read_text())["sha256"]
        if not all(isinstance(d, str) for d in expected.values()):
            raise TypeError("every sha256 must be a string")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{mpath} is not a valid manifest ({e})") from None
    if BUNDLE_JSON not in expected:
        raise BundleError(f"{mpath} does not cover {BUNDLE_JSON}")
    for rel, digest in expected.items():
        path = inside(root, rel, str(mpath))
        if not path.is_file():
            raise BundleError(f"{path} is listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise BundleError(
                f"{path} does not match its sha256 in the manifest (tampered or truncated). "
                "Hint: re-copy the bundle, or re-run the command that wrote it."
            )
    listed = {PurePosixPath(rel).as_posix() for rel in expected}
    extra = set(_bundle_files(root)) - listed
    if extra:
        raise BundleError(
            f"{root} holds files the manifest does not list: {', '.join(sorted(extra))}; "
            "Hint: remove them, or re-run the command that wrote the bundle"
        )
    return listed


def check_weight_sets(bundle: Bundle, listed: set[str]) -> None:
    """Every weight set bundle.json names is a file inside the bundle, covered by the manifest,
    whose header fits the architecture."""
    for name, rel in bundle.weight_sets.items():
        if not isinstance(rel, str):
            raise BundleError(f"{bundle.root / BUNDLE_JSON}: weight set {name!r} has no path")
        bundle.weights_path(name)  # inside the bundle
        if PurePosixPath(rel).as_posix() not in listed:
            raise BundleError(
                f"weight set {name!r} names {rel!r}, which the manifest does not cover; "
                "Hint: re-run the command that wrote the bundle"
            )
        bundle.check_weights(name)


def load_bundle(root: str | Path) -> Bundle:
    root = Path(root)
    if not (root / BUNDLE_JSON).is_file():
        raise BundleError(f"{root} is not a bundle: {BUNDLE_JSON} is missing")
    listed = verify_manifest(root)
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
        if "preprocess" in meta:
            bundle.preprocess = Preprocess.from_dict(meta["preprocess"])
            bundle.preprocess.check(bundle.dataset)
    except PreprocessError as e:
        raise BundleError(f"{root / BUNDLE_JSON}: preprocess: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{root / BUNDLE_JSON} is malformed: {e}") from None
    for p in bundle.front:
        if p.weights not in bundle.weight_sets:
            raise BundleError(f"point {p.id!r} uses weight set {p.weights!r}, which the bundle lacks")
    try:
        bundle.point(bundle.default_point)
    except KeyError as e:
        raise BundleError(f"{root / BUNDLE_JSON}: default_point: {e.args[0]}") from None
    check_weight_sets(bundle, listed)
    return bundle


def new_bundle(root: str | Path, cfg: ViTConfig, dataset: dict[str, Any]) -> Bundle:
    return Bundle(Path(root), cfg, dataset, {}, [], default_point="static")
