"""The walrusfs(1) manual page, generated from the command's own parser so it cannot fall behind it.

    python -m walrusfs.manpage > docs/walrusfs.1      (tests/client/test_cli.py checks it is current)
    man docs/walrusfs.1

The commands and their options come from the parser and the mount options from the same table as
``walrusfs mount --help``; the sections around them (files, environment, exit status) are here.
"""

from __future__ import annotations

import argparse
import sys

from .completion import walk
from .fs.config import user_home

DESCRIPTION = """\
walrusfs is a FUSE filesystem for data that must not disappear. Files written into a mount are
cut into blocks, staged locally, packed into blobs, and each blob is erasure-coded with RedStuff
over a committee of storage nodes; fsync returns only once every blob the file uses holds an
availability certificate. The same command runs the storage nodes and a local test network."""

QUICK_START = """\
walrusfs cluster init DIR; walrusfs cluster up DIR
walrusfs mkfs NAME --committee DIR/committee.toml --writer-key DIR/writer.key
walrusfs mount NAME /mnt/x     (or: mount -t walrusfs NAME /mnt/x)
walrusfs status /mnt/x
walrusfs umount /mnt/x"""

FILES = [
    ("HOME/fs/NAME/", "the local state of filesystem NAME. HOME is --home DIR, -o home=DIR, $WALRUSFS_HOME, "
                      "else ~/.local/share/walrusfs of the user running the command (from the password "
                      "database, not $HOME, which mount(8) does not pass on)."),
    ("HOME/fs/NAME/fs.key", "the filesystem's own key: back it up; with it and the committee file the "
                            "filesystem can be restored from the network on any machine."),
    ("HOME/fs/NAME/fs.toml", "settings fixed at mkfs."),
    ("HOME/fs/NAME/mount.log", "the mount daemon's log."),
    ("HOME/cluster/", "the bundled local network (walrusfs cluster), whose committee.toml and writer.key are "
                      "the defaults of --committee and --writer-key (HOME as above, but never -o home=)."),
    ("/usr/sbin/mount.walrusfs", "the helper mount(8) runs for mount -t walrusfs (walrusfs install-helper)."),
]

ENVIRONMENT = [
    ("WALRUSFS_HOME", "where filesystems' local state lives (as --home); mount(8) passes it on to the helper."),
]

EXIT_STATUS = """\
0 on success; 1 on an error (the message says what failed and what to do); 2 for a usage error.
walrusfs status: 2 while uploads or snapshots are failing. walrusfs fsck: as fsck(8), 0 clean,
1 repaired, 4 problems left, 8 operational error. walrusfs cluster status: 3 when a node is not up."""


def roff(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in out.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split()).removeprefix("usage: ")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
            label = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings) + roff(metavar)
        else:
            label = f"\\fI{roff(action.metavar or action.dest)}\\fR"
        help_text = action.help or ""
        if "%(default)" in help_text:
            help_text = help_text % {"default": action.default}
        lines += [".TP", label, roff(help_text)]
    return lines


def manpage(parser: argparse.ArgumentParser, version: str) -> str:
    from .fs.mount_options import OPTION_HELP

    lines = [
        f'.TH WALRUSFS 1 "" "walrusfs {roff(version)}" "User Commands"',
        ".SH NAME", "walrusfs \\- a filesystem whose data is erasure\\-coded over a committee of storage nodes",
        ".SH SYNOPSIS", "\\fBwalrusfs\\fR [\\fB\\-\\-version\\fR] [\\fB\\-v\\fR] [\\fB\\-\\-home\\fR \\fIDIR\\fR] "
        "\\fICOMMAND\\fR ...", ".br", "\\fBmount \\-t walrusfs\\fR \\fINAME\\fR \\fIDIR\\fR [\\fB\\-o\\fR "
        "\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION", roff(DESCRIPTION), ".PP", "A start:", ".PP", ".nf", roff(QUICK_START), ".fi",
        ".SH GLOBAL OPTIONS", *_options(parser),
        ".SH COMMANDS",
    ]
    for path, command, subparsers in walk(parser):
        if not path or subparsers:
            continue  # the top level and groups (cluster, blob, ...) are described by their commands
        lines += [".SS " + roff("walrusfs " + " ".join(path)), roff(_usage(command))]
        if command.description:
            lines += [".PP", roff(command.description)]
        lines += _options(command)
    lines += [".SH MOUNT OPTIONS",
              "Given with \\fB\\-o\\fR to \\fBwalrusfs mount\\fR or \\fBmount \\-t walrusfs\\fR, or in the "
              "fourth field of an fstab(5) line, comma\\-separated:"]
    for name, text in OPTION_HELP.items():
        lines += [".TP", f"\\fB{roff(name)}\\fR", roff(text)]
    lines += [".PP", "An fstab line: \\fBNAME /mnt/x walrusfs _netdev,home=/var/lib/walrusfs 0 0\\fR. "
              "\\fBmount \\-a\\fR leaves a filesystem that is already mounted where fstab says as it is."]
    lines += [".SH FILES"]
    for name, text in FILES:
        lines += [".TP", f"\\fI{roff(name)}\\fR", roff(text)]
    lines += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        lines += [".TP", f"\\fB{roff(name)}\\fR", roff(text)]
    lines += [".SH EXIT STATUS", roff(EXIT_STATUS),
              ".SH SEE ALSO", "mount(8), fstab(5), fusermount3(1); README.md and docs/operating.md in the source."]
    # Defaults in help texts name the home of whoever generates the page: the reader's is ~.
    return ("\n".join(lines) + "\n").replace(roff(f"{user_home()}/"), "~/")


def main() -> int:
    from .cli import build_parser, package_version

    sys.stdout.write(manpage(build_parser(), package_version()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
