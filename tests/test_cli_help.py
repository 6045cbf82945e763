"""``dfsfuse --help`` stays light: building the parsers imports neither torch nor numpy.

Behaviour, not timing (``benchmarks/cli_help.py`` measures the time): each check runs in a
fresh interpreter, so modules imported by other tests cannot hide a heavy import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dfsfuse.cli import COMMAND_MODULES, build_parser

HEAVY = ("torch", "numpy")


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_every_parser_imports_no_heavy_module():
    """Register each command module in turn and name the first one that pulls in torch or numpy."""
    code = f"""
import argparse, importlib, json, sys
import dfsfuse.cli
heavy = {HEAVY!r}
report = {{"cli": [m for m in heavy if m in sys.modules]}}
sub = argparse.ArgumentParser().add_subparsers()
for name in dfsfuse.cli.COMMAND_MODULES:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            continue
        raise
    module.register(sub)
    report[name] = [m for m in heavy if m in sys.modules]
print(json.dumps(report))
"""
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["cli"] == [], "importing dfsfuse.cli imports " + ", ".join(report["cli"])
    for name, loaded in report.items():
        assert loaded == [], (f"{name}.register() imports {', '.join(loaded)}: import heavy modules inside run(), "
                              "take option choices from dfsfuse.options")


def _subcommands() -> list[str]:
    for action in build_parser()._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return list(action.choices)
    return []


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[name, "--help"] for name in _subcommands()],
                         ids=lambda argv: " ".join(argv))
def test_help_and_version_exit_zero_without_torch(argv):
    code = (
        "import sys\nfrom dfsfuse.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code or 0\nelse:\n    code = 0\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\nsys.exit(code)\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"
    assert ("usage: dfsfuse" in proc.stdout) if "--help" in argv else proc.stdout.startswith("dfsfuse ")


def test_every_listed_command_module_has_register():
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        assert callable(getattr(module, "register", None)), name
