"""What /pareto says a point does: the text is read off the point's method and params."""

from __future__ import annotations

from skipvit.model.bundle import Point
from skipvit.service.pareto import describe


def test_per_batch_lac_says_the_request_size_it_was_measured_at():
    batch = Point(
        "lac-batch8-0.3", "lac", "static", {"alpha": 0.3, "mode": "per-batch", "request_images": 8}, {}
    )
    text = describe(batch)
    assert "the request's images halt together" in text and "measured on requests of 8 images" in text
    example = describe(Point("lac-ex-0.3", "lac", "static", {"alpha": 0.3, "mode": "per-example"}, {}))
    assert "each image halts on its own" in example and "measured on requests" not in example
