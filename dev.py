#!/usr/bin/env python3
"""Set up the project in ./.venv and run the demo or the test suite.

    python3 dev.py demo [landscape demo options]
    python3 dev.py test [pytest options]

Set-up (first run, and again when pyproject.toml changes): a virtualenv that
can see the system's packages (so an installed torch, e.g. a CUDA build, is
reused), ``torch==2.13.0`` only when no torch is importable, then this
package with its ``dev`` extra in editable mode. Needs only Python >= 3.10
and pip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".landscape-installed"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / (name + (".exe" if os.name == "nt" else ""))


def _run(cmd: list[str | Path], **kw) -> int:
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def _pip(*args: str) -> None:
    cmd = [_bin("python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    if _run(cmd) != 0:
        sys.exit(f"dev.py: '{' '.join(map(str, cmd))}' failed")


def setup() -> Path:
    python = _bin("python")
    if not python.exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return python
    if _run([python, "-c", "import torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        print("dev.py: no torch found; installing torch==2.13.0", flush=True)
        _pip("torch==2.13.0")
    print("dev.py: installing landscape and its dependencies", flush=True)
    _pip("-e", ".[dev]")
    STAMP.write_text(digest + "\n")
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print("usage: python3 dev.py demo|test|setup [options]", file=sys.stderr)
        return 2
    python = setup()
    command, rest = argv[0], argv[1:]
    if command == "setup":
        return 0
    if command == "demo":
        return _run([_bin("landscape"), "demo", *rest])
    return _run([python, "-m", "pytest", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
