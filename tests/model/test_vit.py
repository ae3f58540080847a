"""The adaptive ViT's loop: static parity, per-row skip and exit semantics."""

from __future__ import annotations

import pytest
import torch

from skipvit.model.config import ViTConfig
from skipvit.model.policy import EXIT, RUN, SKIP, ExecutionPolicy, MaskPolicy
from skipvit.model.vit import build_model


def plain_forward(model, x):
    h = model.embed(x)
    for j in range(model.depth):
        h = model.block(j)(h)
    return model.forward_head(h)


def test_static_matches_plain_loop(tiny_model, tiny_cfg):
    x = torch.randn(7, tiny_cfg.in_channels, tiny_cfg.image_size, tiny_cfg.image_size)
    out = tiny_model(x)
    torch.testing.assert_close(out.logits, plain_forward(tiny_model, x), atol=1e-6, rtol=0)
    assert out.executed.shape == (7, tiny_cfg.depth) and out.executed.all()
    assert (out.exit_layer == tiny_cfg.depth).all()


def test_all_run_mask_policy_matches_static(tiny_model, tiny_cfg):
    """The compacting path (no fast path) with every row on equals the plain loop."""
    x = torch.randn(5, 1, 16, 16)
    dec = torch.full((5, tiny_cfg.depth), RUN, dtype=torch.int8)
    out = tiny_model(x, MaskPolicy(dec))
    torch.testing.assert_close(out.logits, plain_forward(tiny_model, x), atol=1e-6, rtol=0)


def test_skipped_rows_keep_state_and_match_per_row_reference(tiny_model, tiny_cfg):
    torch.manual_seed(1)
    x = torch.randn(6, 1, 16, 16)
    dec = torch.randint(0, 2, (6, tiny_cfg.depth), dtype=torch.int8)  # RUN or SKIP
    dec[0] = SKIP  # a row that runs nothing
    out = tiny_model(x, MaskPolicy(dec))
    for b in range(6):
        h = tiny_model.embed(x[b : b + 1])
        for j in range(tiny_cfg.depth):
            if dec[b, j] == RUN:
                h = tiny_model.block(j)(h)
        torch.testing.assert_close(out.logits[b : b + 1], tiny_model.forward_head(h), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.executed, dec == RUN)
    assert out.layers_executed[0] == 0


def test_exit_answers_from_head_at_that_point_and_stops_running(tiny_model, tiny_cfg):
    x = torch.randn(3, 1, 16, 16)
    dec = torch.full((3, tiny_cfg.depth), RUN, dtype=torch.int8)
    dec[1, 2] = EXIT  # row 1 exits before layer 2 ...
    dec[1, 3] = RUN  # ... and a later RUN must not revive it
    out = tiny_model(x, MaskPolicy(dec))
    h = tiny_model.embed(x[1:2])
    for j in range(2):
        h = tiny_model.block(j)(h)
    torch.testing.assert_close(out.logits[1:2], tiny_model.forward_head(h), atol=1e-5, rtol=1e-5)
    assert out.executed[1].tolist() == [True, True, False, False]
    assert out.exit_layer.tolist() == [tiny_cfg.depth, 2, tiny_cfg.depth]
    torch.testing.assert_close(out.logits[[0, 2]], plain_forward(tiny_model, x[[0, 2]]), atol=1e-5, rtol=1e-5)


def test_policy_exit_logits_are_used():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=3)
    model = build_model(cfg).eval()

    class ExitAtOne(ExecutionPolicy):
        def decide(self, layer, h, alive):
            return torch.full((h.shape[0],), EXIT if layer == 1 else RUN, dtype=torch.int8)

        def exit_logits(self, layer, h, rows):
            return torch.full((rows.numel(), 3), float(layer))

    out = model(torch.randn(2, 1, 8, 8), ExitAtOne())
    assert torch.equal(out.logits, torch.ones(2, 3))
    assert out.executed.tolist() == [[True, False], [True, False]]


def test_shared_layers_use_one_block():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=5, heads=2, num_classes=3, shared_layers=True)
    model = build_model(cfg)
    assert len(model.blocks) == 1 and model.block(4) is model.block(0)
    assert model(torch.randn(2, 1, 8, 8)).executed.shape == (2, 5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(image_size=30, patch_size=4), dict(dim=30, heads=4), dict(depth=0), dict(dropout=1.0)],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ViTConfig(**kwargs)


def test_config_round_trip(tiny_cfg):
    assert ViTConfig.from_dict(tiny_cfg.to_dict()) == tiny_cfg
    with pytest.raises(ValueError, match="unknown"):
        ViTConfig.from_dict({**tiny_cfg.to_dict(), "bogus": 1})


# ---------------------------------------------------------------- fixed-capacity compaction


def mixed_decisions(b, depth, seed=0):
    """RUN, SKIP and EXIT per row and layer, plus a row that runs everything and one that exits first."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randint(0, 3, (b, depth), generator=g).to(torch.int8)
    dec[0] = RUN
    dec[1, 0] = EXIT
    return dec


def assert_same_forward(out, ref):
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.executed, ref.executed)
    assert torch.equal(out.exit_layer, ref.exit_layer)


@pytest.mark.parametrize("capacity", ["none", "enough", "per-layer", "too-small", "zero"])
def test_fixed_compaction_equals_exact(tiny_model, tiny_cfg, capacity):
    from skipvit.kernels.syncs import count_syncs

    torch.manual_seed(2)
    x = torch.randn(12, 1, 16, 16)
    dec = mixed_decisions(12, tiny_cfg.depth)
    ref = tiny_model(x, MaskPolicy(dec))
    per_layer = ref.executed.sum(0).tolist()  # rows that run each layer
    cap = {
        "none": None,
        "enough": max(per_layer),
        "per-layer": per_layer,
        "too-small": max(per_layer) - 1,
        "zero": 0,
    }[capacity]
    with count_syncs("cpu") as syncs:
        out = tiny_model(x, MaskPolicy(dec), compaction="fixed", capacity=cap)
    assert_same_forward(out, ref)
    overflow = capacity in ("too-small", "zero")
    if overflow:  # the end-of-forward check, then the exact rerun with its per-layer reads
        assert syncs.count > tiny_cfg.depth
    else:
        assert syncs.count == 1 and syncs.calls == ["__bool__"]


def test_fixed_mode_set_on_the_model_and_its_errors(tiny_model, tiny_cfg):
    x = torch.randn(5, 1, 16, 16)
    dec = mixed_decisions(5, tiny_cfg.depth, seed=1)
    ref = tiny_model(x, MaskPolicy(dec))
    tiny_model.compaction, tiny_model.capacity = "fixed", 3
    assert_same_forward(tiny_model(x, MaskPolicy(dec)), ref)
    with pytest.raises(ValueError, match="one per layer"):
        tiny_model(x, MaskPolicy(dec), capacity=[1, 2])
    with pytest.raises(ValueError, match="'exact' or 'fixed'"):
        tiny_model(x, MaskPolicy(dec), compaction="lazy")


def test_fixed_mode_uses_policy_exit_logits():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=3, heads=2, num_classes=3)
    model = build_model(cfg).eval()

    class ExitRowOneAtTwo(ExecutionPolicy):
        def decide(self, layer, h, alive):
            d = torch.full((h.shape[0],), RUN, dtype=torch.int8)
            d[1] = EXIT if layer == 2 else RUN
            return d

        def exit_logits(self, layer, h, rows):
            return torch.full((rows.numel(), 3), float(layer))

    x = torch.randn(3, 1, 8, 8)
    ref = model(x, ExitRowOneAtTwo())
    out = model(x, ExitRowOneAtTwo(), compaction="fixed", capacity=2)
    assert torch.equal(out.logits[1], torch.full((3,), 2.0))
    assert_same_forward(out, ref)


@pytest.mark.gpu
def test_fixed_forward_syncs_once_on_cuda(tiny_cfg):
    """The fixed path waits for the GPU once per forward (the overflow check); exact waits per layer."""
    from skipvit.kernels.syncs import count_syncs

    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval().cuda()
    x = torch.randn(64, 1, 16, 16, device="cuda")
    dec = mixed_decisions(64, tiny_cfg.depth).cuda()  # on the device: no copy per layer
    with torch.inference_mode():
        ref = model(x, MaskPolicy(dec))
        model(x, MaskPolicy(dec), compaction="fixed")  # warm-up: compiles the kernels
        torch.cuda.synchronize()
        with count_syncs("cuda") as fixed:
            out = model(x, MaskPolicy(dec), compaction="fixed")
        with count_syncs("cuda") as exact:
            model(x, MaskPolicy(dec))
        torch.cuda.synchronize()
    assert_same_forward(out, ref)
    assert fixed.count == 1, fixed.calls
    assert exact.count >= tiny_cfg.depth


def test_a_large_cpu_batch_runs_each_block_in_chunks_with_the_same_result(tiny_model):
    tokens = tiny_model.cfg.num_tokens
    x = torch.randn(10, 1, 16, 16)
    calls = []
    hook = tiny_model.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.inference_mode():
            tiny_model.cpu_chunk_tokens = None
            whole = tiny_model(x).logits
            assert calls == [10]
            calls.clear()
            tiny_model.cpu_chunk_tokens = 4 * tokens  # at most four images per chunk
            chunked = tiny_model(x).logits
            assert calls == [4, 4, 2]  # ten images: three chunks (split as equal as 4-image chunks go)
            calls.clear()
            tiny_model(x[:8])
            assert calls == [8]  # not more than twice a chunk: whole
        calls.clear()
        tiny_model(x)  # autograd on (training, gradients): never in chunks
        assert calls == [10]
    finally:
        hook.remove()
        tiny_model.cpu_chunk_tokens = None
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
