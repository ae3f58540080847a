"""skipvit: adaptive-depth Vision Transformer inference.

The repository keeps ``model/``, ``kernels/``, ``training/``, ``service/`` and ``benchmarks/`` at
its top level; installed, they are the sub-packages ``skipvit.model``, ``skipvit.kernels`` and so
on (``pyproject.toml`` maps them with setuptools' ``package-dir``), so ``skipvit`` is the only
top-level import name the distribution adds.
"""

__version__ = "0.1.0"
