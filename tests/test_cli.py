"""The command table: every command wired to a module with `add_arguments` and `run`, only the named
command's module imported, and the shared flag groups."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from skipvit import flags
from skipvit.cli import COMMANDS, GROUPS, build_parser, main


def test_every_command_module_has_add_arguments_and_run():
    for path, module, help in COMMANDS:
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), module
        assert help and (len(path) == 1 or path[0] in GROUPS), path
    assert len({path for path, _, _ in COMMANDS}) == len(COMMANDS)


def test_the_parser_routes_each_command_path_to_its_module():
    parser = build_parser()
    for path, module, _ in COMMANDS:
        required = {
            ("train", "static"): ["--data", "synthetic", "--out", "x"],
            ("train", "rl"): ["--data", "synthetic", "--out", "x"],
            ("compare",): ["--bundle", "x", "--point", "rl"],
            ("import", "hf"): ["dir", "--out", "x"],
            ("export", "hf"): ["--bundle", "x", "--out", "y"],
            ("fleet",): ["status"],
        }.get(path, ["--bundle", "x"] if path[0] in ("train", "search", "evaluate", "analyze") else [])
        args = parser.parse_args([*path, *required])
        assert args.command == path[0] and args.command_module == module
        if len(path) == 2:
            assert getattr(args, GROUPS[path[0]][1]) == path[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_top_level_help_imports_no_command_module_and_no_torch():
    done = _run(
        "import sys\nfrom skipvit.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['bench', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "print('torch' in sys.modules, any(m.startswith('skipvit.training.') for m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False"
    assert (
        "{static,rl,exits}" in done.stdout
        and "{server,model,overload,big-images,autopilot,kernel}" in done.stdout
    )  # the groups


def test_only_the_named_command_is_imported():
    done = _run(
        "import sys\nfrom skipvit.cli import build_parser\n"
        "build_parser(['search', 'lac', '--bundle', 'x']).parse_args(['search', 'lac', '--bundle', 'x'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('skipvit.training.search', "
        "'skipvit.training.train', 'skipvit.benchmarks.bench'))))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['skipvit.training.search', 'skipvit.training.search.lac']"


def test_python_dash_m_skipvit_is_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "skipvit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "train" in done.stdout and "bench" in done.stdout


def test_a_value_error_of_a_command_exits_2_with_its_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["parity", "--mode", "none", "--alpha", "-1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("skipvit: error: ")


def test_flag_groups_parse_lists_and_loader_options():
    assert flags.positive_ints("1, 8,64") == [1, 8, 64]
    assert flags.floats("0,0.5") == [0.0, 0.5]
    assert flags.data_opt("image_size=32") == ("image_size", 32)
    assert flags.data_opt("scale=0.5") == ("scale", 0.5)
    assert flags.data_opt("root=a=b") == ("root", "a=b")
    for parse, bad in ((flags.positive_ints, "0,8"), (flags.positive_ints, "a"), (flags.floats, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        flags.data_opt("novalue")


def test_checkpointing_group_names_its_unit_and_state():
    p = argparse.ArgumentParser()
    flags.add_checkpointing(p, "runs/x", unit="generations", state="search state")
    args = p.parse_args(["--ckpt-dir", "d", "--resume", "--stop-after", "2"])
    assert (args.ckpt_dir, args.resume, args.stop_after) == ("d", True, 2)
    assert "N generations" in p.format_help() and "search state directory" in p.format_help()
