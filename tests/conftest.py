"""Shared fixtures: one tiny model config and one tiny trained bundle for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skipvit.model.config import ViTConfig
from skipvit.model.vit import PRESETS, build_model
from tests.cli_args import argv

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_BUNDLE = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-mnist"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_cfg() -> ViTConfig:
    return ViTConfig(**PRESETS["tiny"], num_classes=4)


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return build_model(tiny_cfg).eval()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle trained for two epochs on the synthetic dataset through the real CLI."""
    from skipvit.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    ckpt = tmp_path_factory.mktemp("ckpt")
    words = "train static --data synthetic --epochs 3 --preset tiny --device cpu --seed 0"
    main(argv(words, out=out, ckpt_dir=ckpt))
    return out


@pytest.fixture(scope="session")
def tiny_rl_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle plus a weight set and point ``rl`` (one epoch of RL gates)."""
    import shutil

    from skipvit.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny-rl"
    shutil.copytree(tiny_bundle, out)
    ckpt = tmp_path_factory.mktemp("ckpt-rl")
    main(argv("train rl --data synthetic --epochs 1 --device cpu", init_from=out, out=out, ckpt_dir=ckpt))
    return out


@pytest.fixture(scope="session")
def tiny_gate_bundle(tiny_rl_bundle, tmp_path_factory) -> Path:
    """The RL bundle plus more gate points on the same weights: ``rl-t0.8`` (every threshold 0.8)
    and ``nsga-a`` (genes: layers 0 and 3 removed). Their rows can share one forward with ``rl``."""
    import shutil

    from skipvit.model.bundle import Point, load_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-gates"
    shutil.copytree(tiny_rl_bundle, out)
    bundle = load_bundle(out)
    rl = bundle.point("rl")
    bundle.upsert_points(
        [
            Point("rl-t0.8", "rl", rl.weights, {**rl.params, "thresholds": 0.8}, dict(rl.metrics)),
            Point(
                "nsga-a", "nsga", rl.weights, {"genes": [-1, 0.25, 0.5, -1], "step": 0.25}, dict(rl.metrics)
            ),
        ]
    )
    bundle.save()
    return out


@pytest.fixture(scope="session")
def tiny_fleet_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle plus point ``lac-ex-0.5`` on the same weights (LAC: nothing to train): two
    points to switch a fleet between."""
    import shutil

    from skipvit.model.bundle import Point, load_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-fleet"
    shutil.copytree(tiny_bundle, out)
    bundle = load_bundle(out)
    metrics = dict(bundle.point("static").metrics)
    bundle.upsert_points(
        [Point("lac-ex-0.5", "lac", "static", {"alpha": 0.5, "mode": "per-example"}, metrics)]
    )
    bundle.save()
    return out


@pytest.fixture(scope="session")
def tiny_dyce_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle plus weight set ``dyce`` (exit heads after every layer, 3 epochs through the
    real CLI) and the points of a small ``search dyce``."""
    import shutil

    from skipvit.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny-dyce"
    shutil.copytree(tiny_bundle, out)
    ckpt = tmp_path_factory.mktemp("ckpt-exits")
    main(argv("train exits --epochs 3 --device cpu", bundle=out, ckpt_dir=ckpt))
    main(argv("search dyce --lambdas 9 --thresholds 12 --max-points 6 --device cpu", bundle=out))
    return out


@pytest.fixture(scope="module")
def transformers():
    """The transformers package (the hf extra), imported offline; the test is skipped without it."""
    from skipvit.training.hf.reference import import_transformers

    try:
        return import_transformers()
    except ImportError:
        pytest.skip("transformers is not installed (the hf extra)")
