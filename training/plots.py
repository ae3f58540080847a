"""front.png: accuracy vs. compute, one colour per method, the static point marked.

The x axis is compute in layers: ``relative_compute x depth``. For the layer-skipping methods that
is their mean layers; for a method with heads of its own (DyCE's exits) it also counts those.
"""

from __future__ import annotations

from skipvit.model.bundle import Bundle


def draw_front(bundle: Bundle) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = bundle.architecture.depth
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    methods = sorted({p.method for p in bundle.front})
    for i, method in enumerate(methods):
        for j, pts in enumerate(_lines(p for p in bundle.front if p.method == method)):
            pts = sorted(pts, key=lambda p: _layers(p, depth))
            xs = [_layers(p, depth) for p in pts]
            ys = [100 * p.metrics["accuracy"] for p in pts]
            if method == "static":
                ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=3, label="static")
            else:
                ax.plot(xs, ys, "o-", color=f"C{i}", label=None if j else method, ms=4)
    ax.set_xlabel(f"compute in layers (relative compute × {depth})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{bundle.dataset.get('name', '')}: accuracy vs. compute")
    ax.set_xlim(0, bundle.architecture.depth + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(bundle.root / "front.png")
    plt.close(fig)


def _lines(points) -> list[list]:
    """One method's points as lines: one per weight set that holds several (a search's points), and
    one through the weight sets that hold one each (a sweep, e.g. RL runs of several reward weights)."""
    by_weights: dict[str, list] = {}
    for p in points:
        by_weights.setdefault(p.weights, []).append(p)
    singles = [g[0] for g in by_weights.values() if len(g) == 1]
    return [g for g in by_weights.values() if len(g) > 1] + ([singles] if singles else [])


def _layers(point, depth: int) -> float:
    m = point.metrics
    return m["relative_compute"] * depth if "relative_compute" in m else m["mean_layers"]
