"""The genes of the NSGA-II search over the RL gates, and the non-dominated set.

**Genes.** One per layer, from {-1} ∪ {0, s, 2s, ..., 1} (step s): -1 removes the layer, which then
never runs; any other value is the threshold of the layer's gate (run iff p_j >= g; 0 always runs).
pymoo holds the *index* of each value, an integer in [0, K]; ``decode``/``encode`` translate.
"""

from __future__ import annotations

import numpy as np


def gene_values(step: float) -> np.ndarray:
    """The values a gene can take: -1, then 0 to 1 in steps of ``step``."""
    n = round(1 / step) if step > 0 else 0
    if not 0 < step <= 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"the gene step must divide 1 evenly (e.g. 0.25, 0.1, 0.01), got {step}")
    return np.concatenate([[-1.0], np.round(np.arange(n + 1) / n, 6)])


def decode(codes, step: float) -> np.ndarray:
    """Integer indices (..., L) -> gene values (..., L)."""
    return gene_values(step)[np.asarray(codes).astype(int)]


def encode(genes, step: float) -> np.ndarray:
    """Gene values (..., L) -> integer indices; a value off the grid is an error."""
    values = gene_values(step)
    genes = np.asarray(genes, dtype=float)
    idx = np.abs(genes[..., None] - values).argmin(-1)
    if not np.allclose(values[idx], genes, atol=1e-6):
        raise ValueError(f"genes {genes.tolist()} are not all on the grid {values.tolist()}")
    return idx


def non_dominated(f: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of (n, m) minimised objectives; repeated rows kept once."""
    f = np.asarray(f, dtype=float)
    keep: list[int] = []
    for i in range(len(f)):
        dominated = np.any(np.all(f <= f[i], axis=1) & np.any(f < f[i], axis=1))
        repeated = any(np.array_equal(f[i], f[j]) for j in keep)
        if not dominated and not repeated:
            keep.append(i)
    return keep
