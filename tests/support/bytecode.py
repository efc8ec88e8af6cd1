"""Bytecode for the code under test, compiled once per test session.

Every node, mount daemon and ``walrusfs`` command a test starts is a fresh Python process that
imports walrusfs and nodes. Where ``PYTHONDONTWRITEBYTECODE`` is set (as on the shared test
machines), no process ever writes the compiled modules back, so each one compiles every module it
imports from source again: about a sixth of the CPU time of starting a node, paid some thousands
of times per suite. Compiling them once up front (as pip does for installed packages) lets every
process load them; a changed source file is recompiled, since Python checks each cache against its
source's modification time and size.
"""

from __future__ import annotations

import compileall
from pathlib import Path


def compile_packages(*packages: str) -> None:
    """Write ``__pycache__`` bytecode for every module of ``packages`` (imported by name, so the copy
    the tests run is the one compiled). Quiet; a module that does not compile is left for its import
    to report."""
    import importlib

    for name in packages:
        init = importlib.import_module(name).__file__
        if init is not None:  # None: a namespace package, not the code under test
            compileall.compile_dir(Path(init).parent, quiet=2, workers=1)
