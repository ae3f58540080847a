"""Configs written before the fields for imported ViTs existed (bundles, training checkpoints) read
back as the same config, and a config at those fields' defaults writes exactly what it used to:
``--resume`` compares the saved settings with ``to_dict`` and must see no change."""

from __future__ import annotations

import json

import pytest
import torch

from skipvit.model.bundle import load_bundle
from skipvit.model.config import OPTIONAL_FIELDS, ViTConfig
from skipvit.model.vit import build_model
from skipvit.training.checkpoint import changed_settings
from tests.conftest import SHIPPED_BUNDLE

# The architecture exactly as bundles and checkpoints recorded it before (no optional field).
OLD = {
    "image_size": 28,
    "in_channels": 1,
    "patch_size": 4,
    "dim": 96,
    "depth": 9,
    "heads": 4,
    "mlp_ratio": 2.0,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "num_classes": 10,
    "shared_layers": False,
}


def test_an_old_config_dict_loads_as_the_defaults_and_writes_back_unchanged():
    cfg = ViTConfig.from_dict(OLD)
    assert cfg == ViTConfig(**OLD)
    assert (cfg.qkv_bias, cfg.ln_eps, cfg.activation, cfg.mlp_dim) == (True, 1e-5, "gelu", None)
    assert (cfg.distill_token, cfg.distill_head, cfg.num_tokens, cfg.mlp_hidden) == (False, False, 50, 192)
    assert cfg.to_dict() == OLD


def test_a_checkpoint_of_the_old_settings_resumes():
    """``training.run.run_settings`` records ``arch.to_dict()``; the resume compares it as JSON."""
    saved = json.loads(json.dumps({"train": {"epochs": 15}, "architecture": OLD}))
    now = {"train": {"epochs": 15}, "architecture": ViTConfig.from_dict(OLD).to_dict()}
    assert changed_settings(saved, now) == []


def test_a_model_at_the_defaults_has_the_state_it_always_had():
    state = build_model(ViTConfig.from_dict(OLD)).state_dict()
    assert not any("dist" in k for k in state)
    assert all(f"blocks.{j}.attn.qkv.bias" in state for j in range(9))


def test_the_shipped_bundle_loads_and_rewrites_its_bundle_json_unchanged():
    bundle = load_bundle(SHIPPED_BUNDLE)
    meta = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text())
    assert "preprocess" not in meta and bundle.preprocess is None
    assert bundle.to_dict() == meta
    assert ViTConfig.from_dict(meta["architecture"]) == bundle.architecture
    model = bundle.build_model("static")
    assert model(torch.zeros(1, 1, 28, 28)).logits.shape == (1, 10)


@pytest.mark.parametrize(
    "extra",
    [
        {"qkv_bias": False},
        {"ln_eps": 1e-12},
        {"activation": "gelu_tanh"},
        {"mlp_dim": 100},
        {"distill_token": True},
        {"distill_token": True, "distill_head": True},
    ],
)
def test_a_field_off_its_default_is_written_and_read_back(extra):
    cfg = ViTConfig(**OLD, **extra)
    d = cfg.to_dict()
    assert {k for k in d if k in OPTIONAL_FIELDS} == set(extra)
    assert ViTConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_a_distillation_head_needs_its_token():
    with pytest.raises(ValueError, match="distill_token"):
        ViTConfig(**OLD, distill_head=True)
