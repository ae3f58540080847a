"""The engine serves rows of different gate points in one forward, each as if it ran alone."""

from __future__ import annotations

import pytest
import torch

from skipvit.service.engine import Engine


def test_mixed_gate_points_in_one_forward_match_separate_forwards(tiny_gate_bundle):
    engine = Engine.from_dir(tiny_gate_bundle, device="cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (12, engine.channels, engine.image_size, engine.image_size), dtype=torch.uint8, generator=g
    )
    points = ["rl", "rl-t0.8", "nsga-a"] * 4
    assert len({engine.batch_key(p) for p in points}) == 1
    mixed = engine.predict(images, points)
    for b, p in enumerate(points):
        alone = engine.predict(images[b : b + 1], p)[0]
        assert mixed[b].path == alone.path, (b, p)
        assert mixed[b].index == alone.index
        assert mixed[b].probability == pytest.approx(alone.probability, abs=1e-5)
    paths = {p: {mixed[b].path for b in range(12) if points[b] == p} for p in set(points)}
    assert all(path[0] == "0" and path[3] == "0" for path in paths["nsga-a"])
    assert engine.batch_key("static") != engine.batch_key("rl")


def test_points_that_cannot_share_a_forward_are_refused(tiny_gate_bundle):
    engine = Engine.from_dir(tiny_gate_bundle, device="cpu")
    images = torch.zeros(2, engine.channels, engine.image_size, engine.image_size, dtype=torch.uint8)
    with pytest.raises(ValueError, match="cannot share"):
        engine.predict(images, ["static", "rl"])
    with pytest.raises(ValueError, match="2 images but 1"):
        engine.predict(images, ["rl"])
