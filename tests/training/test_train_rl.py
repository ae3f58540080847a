"""`skipvit train rl` end to end: into an existing bundle, and transfer learning."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from model.bundle import load_bundle
from training.cli import main

COMMON = ["--data", "synthetic", "--device", "cpu", "--epochs", "1", "--limit-train", "256"]


def test_rl_adds_a_point_to_an_existing_bundle(tiny_rl_bundle):
    out = tiny_rl_bundle
    b = load_bundle(out)
    assert {p.id for p in b.front} == {"static", "rl"}
    rl = b.point("rl")
    assert rl.weights == "rl" and rl.params == {"thresholds": [0.5] * 4}
    assert rl.metrics["split"] == "test" and 0 <= rl.metrics["mean_layers"] <= 4
    assert "## rl" in (out / "REPORT.md").read_text() and "## static" in (out / "REPORT.md").read_text()
    model = b.build_model("rl")
    assert model.agent is not None and len(model.agent.gates) == 4
    main(["evaluate", "--bundle", str(out), "--point", "rl", "--limit", "20", "--device", "cpu"])


def test_transfer_learning_freezes_the_backbone(tiny_bundle, tmp_path):
    out = tmp_path / "t"
    main(["train", "rl", *COMMON, "--data-opt", "classes=6", "--init-from", str(tiny_bundle),
          "--freeze-backbone", "--out", str(out), "--ckpt-dir", str(tmp_path / "c")])  # fmt: skip
    b = load_bundle(out)
    assert b.architecture.num_classes == 6 and len(b.dataset["classes"]) == 6
    assert b.dataset["options"] == {"classes": 6} and b.default_point == "rl"
    before = load_file(str(tiny_bundle / "weights" / "static.safetensors"))
    after = load_file(str(out / "weights" / "rl.safetensors"))
    frozen = [k for k in before if not k.startswith("head.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert after["head.weight"].shape[0] == 6
    assert any(not torch.equal(after[f"agent.gates.{j}.bias"], torch.full((1,), 2.0)) for j in range(4))
    main(["evaluate", "--bundle", str(out), "--limit", "20", "--device", "cpu"])
