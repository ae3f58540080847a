"""What the benchmarks that start one `skipvit serve` and drive it share (`bench overload`,
`bench big-images`): the common flags, the server on a free loopback port, and the report's files."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from skipvit import flags
from skipvit.benchmarks.bench_server import HOST, ServerProcess, free_port
from skipvit.benchmarks.server_report import machine_info, write_report


def add_common(p, out_json: str) -> None:
    """--bundle, --start-timeout, --device, --data-dir, --out-json and --out-md."""
    p.add_argument("--bundle", default="checkpoints/fashion-mnist", help="bundle to serve")
    p.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds the server may take to be ready"
    )
    flags.add_device(p, "cpu", "cpu, cuda or auto")
    flags.add_data_dir(p, "Fashion-MNIST directory (test images to send)")
    p.add_argument("--out-json", default=out_json)
    p.add_argument("--out-md", default=None, help="also write the markdown table here")
    p.add_argument(
        "--server-cpus",
        type=flags.cpu_list,
        default=None,
        metavar="LIST",
        help="pin the server (and the engine processes it starts) to these CPUs, e.g. 0-7 "
        "(default: every CPU, shared with the load generator)",
    )
    p.add_argument(
        "--loadgen-cpus",
        type=flags.cpu_list,
        default=None,
        metavar="LIST",
        help="pin the load generator (this process) to these CPUs, e.g. 8-15",
    )


def pin(args) -> None:
    """Check --server-cpus and --loadgen-cpus against the CPUs this process may use, then pin this
    process (the load generator) to its list; call before the server starts. The server is pinned
    as it starts (``skipvit_server``)."""
    allowed = sorted(os.sched_getaffinity(0))
    for flag, cpus in (("--server-cpus", args.server_cpus), ("--loadgen-cpus", args.loadgen_cpus)):
        if cpus is not None and not set(cpus) <= set(allowed):
            raise ValueError(
                f"{flag} {_ranges(cpus)}: CPUs {_ranges(sorted(set(cpus) - set(allowed)))} are not "
                f"available; Hint: this process may use {_ranges(allowed)}"
            )
    if args.server_cpus and args.loadgen_cpus and set(args.server_cpus) & set(args.loadgen_cpus):
        print("warning: --server-cpus and --loadgen-cpus overlap: those cores are shared", file=sys.stderr)
    args.pinned = {
        "available": len(allowed),
        "server": None if args.server_cpus is None else _ranges(args.server_cpus),
        "loadgen": None if args.loadgen_cpus is None else _ranges(args.loadgen_cpus),
    }
    if args.loadgen_cpus is not None:
        os.sched_setaffinity(0, args.loadgen_cpus)


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, c in enumerate(cpus):
        start = c if start is None else start
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


def bundle_dir(arg: str) -> Path:
    bundle = Path(arg).resolve()
    if not (bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"no bundle at {arg}; Hint: pass --bundle checkpoints/fashion-mnist")
    return bundle


def skipvit_server(args, bundle: Path, name: str, **settings) -> ServerProcess:
    """`skipvit serve` of ``bundle`` on a free loopback port, with ``settings`` (SKIPVIT_* names,
    without the prefix) over the environment's, logging next to the JSON as ``server-NAME.log``."""
    port = free_port()
    env = {
        "SKIPVIT_LOG_LEVEL": "warning",  # unless the caller's environment sets it
        **os.environ,
        "SKIPVIT_DEVICE": args.device,
        "SKIPVIT_ADMIN_TOKEN": f"bench-{name}-admin-token",
        **{f"SKIPVIT_{k.upper()}": str(v) for k, v in settings.items()},
    }
    cmd = [
        sys.executable,
        "-m",
        "skipvit",
        "serve",
        "--bundle",
        str(bundle),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    log = Path(args.out_json).parent / f"server-{name}.log"
    return ServerProcess("skipvit", cmd, env, port, log, cpus=getattr(args, "server_cpus", None))


def header(args) -> dict:
    """The report's first keys: the command, the machine, the bundle."""
    return {
        "command": shlex.join(["skipvit", *getattr(args, "argv", [])]),
        "machine": machine_info(),
        "bundle": args.bundle,
        "cpus": getattr(args, "pinned", None),
    }


write = write_report  # the JSON, the markdown if asked, and the markdown on stdout
