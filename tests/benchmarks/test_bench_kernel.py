"""`skipvit bench kernel` on CPU: the torch paths timed, syncs per forward counted, Triton left to a GPU."""

from __future__ import annotations

import json

from skipvit.cli import main
from tests.cli_args import argv


def test_cpu_run_through_the_cli(tmp_path, capsys):
    out, md = tmp_path / "kernel.json", tmp_path / "kernel.md"
    sizes = "--batch-sizes 1,8 --densities 0,1 --repeats 2 --warmup 1 --model-batch 8"
    main(argv(f"bench kernel --device cpu {sizes}", out_json=out, out_md=md))
    result = json.loads(out.read_text())
    assert result["environment"]["device"] == "cpu"
    keys = {(r["batch"], r["density"]) for r in result["kernels"]}
    assert keys == {(1, 0.0), (1, 1.0), (8, 0.0), (8, 1.0)}
    assert {r["rows_run"] for r in result["kernels"] if r["density"] == 1.0} == {1, 8}
    assert {r["rows_run"] for r in result["kernels"] if r["density"] == 0.0} == {0}
    assert all(r["ms"] > 0 for r in result["kernels"])
    assert not any("triton" in r["method"] for r in result["kernels"])  # timed on a GPU only
    syncs = result["syncs"]
    assert syncs["fixed"]["syncs"] == 1 < syncs["exact"]["syncs"]
    assert md.read_text() in capsys.readouterr().out
