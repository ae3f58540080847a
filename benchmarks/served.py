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
        **os.environ,
        "SKIPVIT_LOG_LEVEL": "warning",
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
    return ServerProcess("skipvit", cmd, env, port, Path(args.out_json).parent / f"server-{name}.log")


def header(args) -> dict:
    """The report's first keys: the command, the machine, the bundle."""
    return {
        "command": shlex.join(["skipvit", *getattr(args, "argv", [])]),
        "machine": machine_info(),
        "bundle": args.bundle,
    }


write = write_report  # the JSON, the markdown if asked, and the markdown on stdout
