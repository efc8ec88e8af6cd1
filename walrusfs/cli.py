"""The ``walrusfs`` command.

Each area registers its own subcommands: a module exposes ``register(subparsers)`` which adds its
parsers and sets ``func`` (called with the parsed arguments, returns an exit code or None).

Registration is lazy: a run imports only the module of the command it runs (the others are listed
by name and summary), so ``walrusfs --help``, ``--version`` and light commands start without numpy,
pyfuse3, trio, httpx or the node server. The man page and the completion script build the full parser.
"""

from __future__ import annotations

import argparse
import importlib
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


# Every command, in the order of --help: the module that registers it, and its one-line summary
# (what --help lists without importing the module; tests/test_command_line.py checks they agree).
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("walrusfs.bench.cli", "measure throughput of one layer"),
    "blob": ("walrusfs.client.cli", "store and read single blobs"),
    "mkfs": ("walrusfs.fs.cli", "create a filesystem on a committee"),
    "mount": ("walrusfs.fs.cli", "mount a filesystem (what mount -t walrusfs runs)"),
    "umount": ("walrusfs.fs.cli", "upload everything staged, then unmount"),
    "install-helper": ("walrusfs.fs.cli", "install /usr/sbin/mount.walrusfs for mount -t walrusfs"),
    "fsck": ("walrusfs.fs.admin", "check a filesystem's metadata against its invariants and repair it"),
    "restore": ("walrusfs.fs.admin", "rebuild a filesystem's local state from the network"),
    "snapshots": ("walrusfs.fs.admin", "list a filesystem's metadata snapshots on the network"),
    "snapshot": ("walrusfs.fs.admin", "publish a metadata snapshot of a mounted filesystem now"),
    "share": ("walrusfs.fs.admin", "print a read capability: mounts the filesystem read-only anywhere"),
    "rotate-key": ("walrusfs.fs.admin", "seal new blocks with a new data key (old ones keep theirs)"),
    "gc": ("walrusfs.fs.gc_cli", "release what a filesystem no longer reaches from the nodes; compact sparse blobs"),
    "status": ("walrusfs.fs.status", "what a mount is doing: staged bytes, uploads, cache, snapshots, node health"),
    "dataset": ("walrusfs.dataset.cli",
                "publish a tree as one content-addressed ID; verify, get and compare datasets from anywhere"),
    "cluster": ("walrusfs.cluster_cli", "run a local network of storage nodes on 127.0.0.1"),
    "node": ("walrusfs.cluster_cli", "run one storage node"),
    "committee": ("walrusfs.committee_cli", "the committee of storage nodes: epoch, shards, handover"),
    "audit": ("walrusfs.repair.audit",
              "storage challenges: which nodes cannot prove they hold the slivers they signed for"),
    "completion": ("walrusfs.completion", "print a shell completion script"),
}
ALL = "*"  # build_parser(ALL): every command's full parser


def build_parser(command: str | None = ALL) -> argparse.ArgumentParser:
    """The parser with ``command``'s module registered in full (ALL: every module; None: none, every
    command a summary only, enough for ``walrusfs --help`` and for an unknown command's error)."""
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
    wanted = {module for name, (module, _) in COMMANDS.items() if command in (ALL, name)}
    registered: set[str] = set()
    for name, (module, summary) in COMMANDS.items():
        if module in wanted:
            if module not in registered:  # it adds all its commands, in this same order
                importlib.import_module(module).register(commands)
                registered.add(module)
        else:
            commands.add_parser(name, help=summary, add_help=False)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, found as argparse will find it (after the global options), or None."""
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            return next(arguments, None)
        if argument.startswith("--") and "=" not in argument and len(argument) > 3 and "--home".startswith(argument):
            next(arguments, None)  # --home DIR (argparse accepts an unambiguous prefix too)
        elif not argument.startswith("-"):
            return argument if argument in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
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
