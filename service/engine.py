"""The engine: a loaded bundle that turns a batch of uint8 images into per-row answers.

Ignorant of HTTP and of batching: ``predict(images, points)`` takes a (B, C, H, W) uint8 tensor
and one point id (or one per row) and returns B ``RowResult``s, in order. Rows of different
points share one forward when the points share a ``batch_key`` (``model.points``); the batcher
only ever hands over such batches. Called from a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.points import batch_key, policy_for_rows
from skipvit.model.preprocess import Preprocess
from skipvit.model.vit import AdaptiveViT


@dataclass(frozen=True)
class RowResult:
    index: int
    label: str
    probability: float
    top_k: list[tuple[str, int, float]]
    layers_executed: int
    path: str


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class BundleView:
    """What the service needs to know of a bundle without running it: classes, image layout (with
    the filter an upload of another size is resized with), points and their batch keys."""

    def __init__(self, bundle: Bundle | str | Path, top_k: int = 3) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.top_k = min(top_k, self.bundle.architecture.num_classes)
        ds = self.bundle.dataset
        self.classes: list[str] = list(ds["classes"])
        self.channels, self.image_size = int(ds["channels"]), int(ds["image_size"])
        pre = self.bundle.preprocess
        self.resample: str = pre.resample if pre is not None else Preprocess().resample
        # a processor that resizes to another size and cuts the model's size from the middle (DeiT)
        self.crop: dict = (
            {"resize": pre.resize, "center_crop": pre.center_crop}
            if pre is not None and pre.center_crop is not None
            else {}
        )

    def point(self, point_id: str | None) -> Point:
        return self.bundle.point(point_id)

    def batch_key(self, point_id: str) -> Hashable:
        """Requests whose points have equal keys may be batched into one forward."""
        return batch_key(self.bundle.point(point_id))

    @property
    def depth(self) -> int:
        return self.bundle.architecture.depth

    def close(self, timeout: float = 5.0) -> None:
        """Release the engine; ``timeout`` bounds the wait for a process engine's child."""


class Engine(BundleView):
    """Runs the bundle in this process: one model per weight set, one forward at a time."""

    def __init__(self, bundle: Bundle, device: torch.device, top_k: int = 3) -> None:
        super().__init__(bundle, top_k)
        self.device = device
        ds = bundle.dataset
        self._mean = torch.tensor(ds["mean"], device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(ds["std"], device=device).view(1, -1, 1, 1)
        self._models: dict[str, AdaptiveViT] = {}
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core
        for name in {p.weights for p in bundle.front}:
            self._models[name] = bundle.build_model(name, device)

    @classmethod
    def from_dir(cls, path, device: str = "auto", top_k: int = 3) -> Engine:
        return cls(load_bundle(path), resolve_device(device), top_k)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, points: str | Sequence[str] | None = None) -> list[RowResult]:
        n = images.shape[0]
        row_points = [points] * n if points is None or isinstance(points, str) else list(points)
        if len(row_points) != n:
            raise ValueError(f"{n} images but {len(row_points)} row points")
        resolved = [self.bundle.point(p) for p in row_points]
        model = self._models[resolved[0].weights]
        policy = policy_for_rows(resolved, model)
        x = (images.to(self.device).float() / 255.0 - self._mean) / self._std  # (B, C, H, W)
        with self._lock:
            out = model(x, policy)
        probs = out.logits.float().softmax(-1).cpu()  # (B, K)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (B, k)
        executed = out.executed.cpu()  # (B, L)
        # Plain lists once, then Python per row: indexing tensors element by element costs more.
        classes = self.classes
        results = []
        for ps, ids, ran in zip(
            top_p.tolist(), top_i.tolist(), executed.to(torch.uint8).tolist(), strict=True
        ):
            top_k = [(classes[i], i, p) for p, i in zip(ps, ids, strict=True)]
            results.append(
                RowResult(
                    index=ids[0],
                    label=classes[ids[0]],
                    probability=ps[0],
                    top_k=top_k,
                    layers_executed=sum(ran),
                    path="".join(map(str, ran)),
                )
            )
        if len(results) != images.shape[0]:
            raise RuntimeError("engine returned a different number of rows than it was given")
        return results

    def warm_up(self) -> None:
        dummy = torch.zeros(1, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        for p in self.bundle.front:
            self.predict(dummy, p.id)
