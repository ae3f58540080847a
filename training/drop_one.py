"""The drop-one-layer table: a weight set's accuracy with every layer run, and with each single layer
removed (the whole block is the identity for every image), on the validation and test splits.

It shows how skippable each layer is before any policy decides anything: a backbone trained with
LayerDrop (``train static --layer-drop``) should lose little when a later layer goes.
"""

from __future__ import annotations

from typing import Any

from skipvit.model.policy import SkipLayersPolicy, StaticPolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data.base import ArrayData
from skipvit.training.evaluate import evaluate
from skipvit.training.report import markdown_table


def drop_one_rows(
    model: AdaptiveViT, splits: dict[str, ArrayData], mean, std, batch_size: int, device
) -> list[dict[str, Any]]:
    """One row per configuration: every layer (``removed`` None), then layer j removed (1-based),
    with the accuracy on each split in ``splits`` (name -> data)."""
    rows = []
    for j in [None, *range(model.depth)]:
        policy = StaticPolicy() if j is None else SkipLayersPolicy([j])
        row: dict[str, Any] = {"removed": None if j is None else j + 1}
        for name, data in splits.items():
            row[name] = evaluate(model, data, mean, std, policy, batch_size, device).accuracy
        rows.append(row)
    return rows


def render_drop_one(rows: list[dict[str, Any]], weights: str) -> str:
    names = [k for k in rows[0] if k != "removed"]
    full = rows[0]
    table = [
        [
            "none" if r["removed"] is None else r["removed"],
            *(f"{100 * r[n]:.2f} ({100 * (r[n] - full[n]):+.2f})" for n in names),
        ]
        for r in rows
    ]
    header = ["layer removed", *(f"{n} acc % (vs every layer)" for n in names)]
    return "\n".join(
        [
            f"## Drop one layer (weights `{weights}`)",
            "",
            "Every image runs every layer but the one removed, which is the identity for all of them.",
            "",
            markdown_table(header, table),
            "",
        ]
    )
