"""Locating the real clients the ecosystem tests drive (Prometheus, Node.js with the npm `consul`
package, python-consul2), and what happens when one is missing: on a developer's machine the
test is skipped with the command that installs it; in CI (CI=true) it fails, because
`scripts/system-deps.sh` installs every one of them there and a skip would hide a broken
install step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"
CONSUL2_DIR = ROOT / ".venv" / "python-consul2"  # python-consul2 beside py-consul: see below
CONSUL2_REQUIREMENT = "python-consul2==0.1.5"


def missing(what: str, install: str) -> None:
    """Skip (developer machine) or fail (CI) for a client that is not installed."""
    message = f"{what} is not installed: {install} (scripts/system-deps.sh does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        missing("prometheus", "apt-get install prometheus")
    assert path is not None
    return path


def node_modules() -> Path:
    """tests/js/node_modules, installed from the committed lock file (`npm ci`) when absent."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("Node.js", "apt-get install nodejs npm")
    modules = JS_DIR / "node_modules"
    if not (modules / "consul").is_dir() or not (modules / "@hashicorp").is_dir():
        res = subprocess.run(
            [str(npm), "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            missing("the npm packages of tests/js", f"cd tests/js && npm ci ({res.stderr[-500:]})")
    return modules


def python_consul2() -> Path:
    """A directory holding python-consul2, to put first on PYTHONPATH of a subprocess.

    py-consul (the dev extra) and python-consul2 both install a top-level `consul` package, so
    they cannot share one environment: python-consul2 goes into a directory of its own
    (`pip install --target`), installed on first use, and its script runs in a subprocess.
    """
    if not (CONSUL2_DIR / "consul" / "base.py").is_file():
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(CONSUL2_DIR),
             CONSUL2_REQUIREMENT, "six"],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        if res.returncode != 0:
            missing(
                CONSUL2_REQUIREMENT, f"pip install --target {CONSUL2_DIR} ({res.stderr[-500:]})"
            )
    return CONSUL2_DIR
