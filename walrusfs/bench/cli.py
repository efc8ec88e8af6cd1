"""``walrusfs bench ...``: every benchmark module adds its own subcommand here.

A benchmark module exposes ``add_parser(bench_subparsers)``, which adds one parser and sets its
``func``. Results print as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ["codec", "node", "blob", "mount", "sealing", "restore", "repair", "epoch", "gc", "gluster"]


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure throughput of one layer")
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"walrusfs.bench.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"walrusfs.bench.{name}":
                raise
            continue  # not written yet
        module.add_parser(kinds)
