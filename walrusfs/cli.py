"""The ``walrusfs`` command.

Each area registers its own subcommands: a module exposes ``register(subparsers)`` which adds its
parsers and sets ``func`` (called with the parsed arguments, returns an exit code or None).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .fs.config import FS_HOME_ENV


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("walrusfs")
    except PackageNotFoundError:
        return "(not installed: no package metadata)"


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"walrusfs {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walrusfs", description=__doc__.splitlines()[0],
                                     epilog="Manual: man walrusfs (docs/walrusfs.1). Completion for bash: "
                                            "eval \"$(walrusfs completion bash)\".")
    parser.add_argument("--version", action=_Version)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages (a mount's daemon too, in its mount.log)")
    parser.add_argument("--home", metavar="DIR", type=Path,
                        help=f"where filesystems' local state lives: DIR/fs/NAME (default: ${FS_HOME_ENV}, else "
                             "~/.local/share/walrusfs of the user running the command; mount -t walrusfs: "
                             "-o home=DIR)")
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
    from . import completion

    completion.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home is not None:  # the environment carries it to everything this command runs or forks
        os.environ[FS_HOME_ENV] = str(args.home.expanduser().resolve())
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
