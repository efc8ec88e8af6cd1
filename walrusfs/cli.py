"""The ``walrusfs`` command.

Each area registers its own subcommands: a module exposes ``register(subparsers)`` which adds its
parsers and sets ``func`` (called with the parsed arguments, returns an exit code or None).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walrusfs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from .bench import cli as bench_cli

    bench_cli.register(commands)
    from .client import cli as blob_cli

    blob_cli.register(commands)
    from .fs import cli as fs_cli

    fs_cli.register(commands)
    from .fs import admin as fs_admin

    fs_admin.register(commands)
    from .fs import status as fs_status

    fs_status.register(commands)
    from . import cluster

    cluster.register(commands)
    from .repair import audit

    audit.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("httpx", "httpcore"):  # one line per request drowns everything else
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"walrusfs: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("walrusfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
