"""Backend selection (``SKIPVIT_COMPACT`` / ``set_backend``) and the model on the Triton path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skipvit import kernels
from skipvit.kernels import dispatch
from skipvit.kernels.syncs import count_syncs
from skipvit.model.policy import MaskPolicy


@pytest.fixture(autouse=True)
def restore_backend():
    previous = dispatch.get_backend()
    yield
    dispatch.set_backend(previous)


def interpreted_triton():
    """The Triton module if its kernels can run on CPU tensors here, else skip."""
    mod = dispatch.triton_module()
    if mod is None:
        pytest.skip("triton is not installed")
    if not mod.INTERPRET:
        pytest.skip("kernels.triton_compact was imported without TRITON_INTERPRET=1")
    return mod


def test_backend_setting_is_validated_with_a_hint(monkeypatch):
    with pytest.raises(ValueError, match="Hint: use one of auto, torch, triton"):
        dispatch.set_backend("cuda")
    monkeypatch.setenv(dispatch.ENV_VAR, " Torch ")
    dispatch.set_backend(None)  # back to the environment's setting
    assert dispatch.get_backend() == "torch"
    assert dispatch.set_backend("auto") == "torch"  # returns the previous setting


def test_triton_is_optional_and_imported_only_when_used():
    """The package imports and computes without triton; importing it does not import triton."""
    code = (
        "import sys, torch\n"
        "from skipvit import kernels\nimport skipvit.model.vit\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
        "sys.modules['triton'] = None  # from here on, `import triton` fails as if not installed\n"
        "from skipvit.kernels import dispatch\n"
        "assert dispatch.triton_module() is None\n"
        "h, m = torch.randn(4, 3), torch.tensor([True, False, True, False])\n"
        "rows, idx = kernels.compact_rows(h, m)\n"
        "assert idx.tolist() == [0, 2]\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_auto_and_torch_use_the_reference_on_cpu():
    h = torch.randn(4, 3)
    for name in ("auto", "torch"):
        kernels.set_backend(name)
        assert dispatch.resolve(h) == "torch"


def test_forced_triton_without_triton_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_module", lambda: None)
    kernels.set_backend("triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        kernels.compact_rows(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))
    kernels.set_backend("auto")  # auto never needs it
    assert dispatch.resolve(torch.randn(4, 3)) == "torch"


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    mod = dispatch.triton_module()
    if mod is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(mod, "INTERPRET", False)
    kernels.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.compact_rows_fixed(torch.randn(4, 3), torch.ones(4, dtype=torch.bool), 4)


def test_forced_triton_runs_the_kernels(monkeypatch):
    mod = interpreted_triton()
    calls = []
    for name in ("compact_rows", "scatter_rows", "compact_rows_fixed", "scatter_rows_fixed"):
        fn = getattr(mod, name)
        monkeypatch.setattr(
            mod, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k)
        )
    kernels.set_backend("triton")
    h, mask = torch.randn(9, 2, 3), torch.rand(9) < 0.5
    rows, idx = kernels.compact_rows(h, mask)
    assert torch.equal(rows, h[mask])
    kernels.scatter_rows(h, idx, rows)
    rows, idx, _count = kernels.compact_rows_fixed(h, mask, 9)
    assert torch.equal(kernels.scatter_rows_fixed(h, idx, rows), h)
    assert set(calls) == {"compact_rows", "scatter_rows", "compact_rows_fixed", "scatter_rows_fixed"}


def test_tensors_that_need_gradients_take_the_reference():
    interpreted_triton()
    kernels.set_backend("triton")
    h = torch.randn(5, 3, requires_grad=True)
    assert dispatch.resolve(h) == "torch"
    rows, _idx = kernels.compact_rows(h, torch.tensor([True, False, True, True, False]))
    rows.sum().backward()
    assert h.grad[:, 0].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    with torch.no_grad():
        assert dispatch.resolve(h) == "triton"


@pytest.mark.parametrize("compaction", ["exact", "fixed"])
def test_model_on_the_triton_path_equals_the_torch_path(tiny_model, tiny_cfg, compaction):
    interpreted_triton()
    torch.manual_seed(3)
    x = torch.randn(6, 1, 16, 16)
    dec = torch.randint(0, 3, (6, tiny_cfg.depth), dtype=torch.int8)  # RUN, SKIP and EXIT
    with torch.inference_mode():
        kernels.set_backend("torch")
        ref = tiny_model(x, MaskPolicy(dec))
        kernels.set_backend("triton")
        out = tiny_model(x, MaskPolicy(dec), compaction=compaction, capacity=4)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.executed, ref.executed) and torch.equal(out.exit_layer, ref.exit_layer)


def test_sync_counter_on_cpu_counts_host_reads():
    x = torch.rand(8)
    m = x < 0.5
    with count_syncs("cpu") as c:
        bool(m.any())
        m.nonzero()
        _ = x[m]
        x.sum()  # stays a tensor: no read
        int(m.sum())
    assert c.count == 4 and c.calls == ["__bool__", "nonzero", "__getitem__", "__int__"]
