"""--server-cpus / --loadgen-cpus of the benchmarks that start one server: the CPU lists, the checks
before anything starts, the pinned server process and what the report says."""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import pytest

from skipvit.benchmarks import served
from skipvit.benchmarks.bench_server import ServerProcess
from skipvit.benchmarks.server_report import machine_text
from skipvit.flags import cpu_list

CPUS = sorted(os.sched_getaffinity(0))


def test_cpu_lists_read_like_tasksets():
    assert cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert cpu_list("5, 1-2,2") == [1, 2, 5]
    for bad in ("", "3-1", "-1", "a", "0-x", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="such as 0-7,12"):
            cpu_list(bad)


def _args(server=None, loadgen=None):
    return SimpleNamespace(server_cpus=server, loadgen_cpus=loadgen)


def test_cpus_this_process_may_not_use_are_refused_before_anything_starts():
    missing = max(CPUS) + 1
    with pytest.raises(ValueError, match=rf"--server-cpus {missing}: CPUs {missing} are not available; Hint"):
        served.pin(_args(server=[missing]))
    assert sorted(os.sched_getaffinity(0)) == CPUS  # nothing was pinned


def test_the_report_says_where_each_side_ran(monkeypatch):
    pinned = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append((pid, list(cpus))))
    args = _args(server=CPUS[:1], loadgen=CPUS[-1:])
    served.pin(args)
    assert pinned == [(0, CPUS[-1:])]  # this process, the load generator
    report = {"machine": {"cpu": "x", "cores": 1}, "cpus": args.pinned}
    assert machine_text(report) == (
        f"x, {len(CPUS)} cores; server on CPUs {CPUS[0]}, load generator on CPUs {CPUS[-1]}"
    )
    unpinned = _args()
    served.pin(unpinned)
    assert len(pinned) == 1 and unpinned.pinned["server"] is None
    assert machine_text({"machine": {"cpu": "x", "cores": 2}, "cpus": unpinned.pinned}).endswith(
        "cores, shared by the server and the load generator"
    )
    assert (
        machine_text({"machine": {"cpu": "x", "cores": 2}})
        == "x, 2 cores, shared by the server and the load generator"
    )


def test_the_server_process_is_pinned_from_its_start(tmp_path):
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    proc = ServerProcess(
        "probe", [sys.executable, "-c", code], dict(os.environ), 0, tmp_path / "p.log", cpus=CPUS[-1:]
    )
    proc.start()
    assert proc.proc.wait(30) == 0
    assert (tmp_path / "p.log").read_text().strip() == str(CPUS[-1:])
