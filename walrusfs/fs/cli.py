"""``walrusfs mkfs | mount | umount | install-helper``: their parsers; the work is in mkfs.py, mount.py
and umount.py, imported when the command runs."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from pathlib import Path

from ..errors import UserError
from .capability import ReadCapability, is_capability
from .config import AES_256_GCM, NO_ENCRYPTION, resolve_source

HELPER_PATH = Path("/usr/sbin/mount.walrusfs")
# One wording for the one key wherever a command takes it (mkfs, mount, restore).
WRITER_KEY_HELP = ("a writer key the committee accepts: signs every write to the nodes "
                   "(default: the bundled network's writer.key)")


def register(commands: argparse._SubParsersAction) -> None:
    mkfs = commands.add_parser("mkfs", help="create a filesystem on a committee")
    mkfs.add_argument("name", help="filesystem name (or a state directory path)")
    mkfs.add_argument("--committee", type=Path, help="committee file (default: the bundled network's)")
    mkfs.add_argument("--writer-key", type=Path, help=WRITER_KEY_HELP)
    mkfs.add_argument("--block-size", type=int, default=1024, help="KiB (default 1024)")
    mkfs.add_argument("--blob-size", type=int, default=16, help="target blob size, MiB (default 16)")
    mkfs.add_argument("--cache-size", type=int, default=2048, help="read cache, MiB (default 2048)")
    mkfs.add_argument("--snapshot-interval", type=float, default=900,
                      help="seconds between metadata snapshots on the network while the tree changes "
                           "(default 900; 0: only at unmount)")
    mkfs.add_argument("--blob-term-days", type=float, default=365.0,
                      help="how long the nodes keep each blob unless a mount renews it (default 365); a mount "
                           "renews every referenced blob when a third of the term is left, so an abandoned "
                           "filesystem frees its space on the nodes this long after its last mount")
    mkfs.add_argument("--no-encryption", dest="encryption", action="store_const", const=NO_ENCRYPTION,
                      default=AES_256_GCM, help="store data and metadata unencrypted, readable by every node "
                      "(only for data meant to be public; the default encrypts with keys that never leave "
                      "this machine)")
    mkfs.add_argument("--force", action="store_true", help="replace an existing filesystem's local state")
    mkfs.set_defaults(func=_mkfs)

    from .mount_options import OPTION_HELP

    mount = commands.add_parser(
        "mount", help="mount a filesystem (what mount -t walrusfs runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="mount options (-o, comma-separated; the same in fstab):\n" + "\n".join(
            textwrap.fill(name, 78, initial_indent="  ", subsequent_indent="  ") + "\n"
            + textwrap.fill(text, 78, initial_indent=" " * 6, subsequent_indent=" " * 6)
            for name, text in OPTION_HELP.items()))
    mount.add_argument("source", help="filesystem name (its state is HOME/fs/NAME, see --home), state directory, "
                       "or a read capability (walrusfs-ro1:..., printed by walrusfs share): mounted read-only")
    mount.add_argument("mountpoint", type=Path, help="an existing, empty directory (see -o nonempty)")
    mount.add_argument("-o", dest="options", metavar="OPTIONS", help="comma-separated mount options (below)")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("--key", type=Path, help="the filesystem's key: with no local state, restore it from the "
                       "network first (same as -o key=PATH)")
    mount.add_argument("--committee", type=Path, help="with --key: the committee file (default: the bundled network's)")
    mount.add_argument("--writer-key", type=Path, help=f"with --key: {WRITER_KEY_HELP}")
    mount.add_argument("--takeover", action="store_true",
                       help="take the filesystem's writer lease over from a writer that died (same as -o takeover)")
    for flag in ("-n", "-s"):  # passed by mount(8) to helpers; nothing to do for them
        mount.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # mount -v passes -v to the helper: the daemon logs debug messages, as walrusfs -v mount does.
    mount.add_argument("-v", dest="mount_verbose", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(func=_mount)

    umount = commands.add_parser("umount", help="upload everything staged, then unmount")
    umount.add_argument("mountpoint", type=Path)
    umount.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    umount.add_argument("--lazy", "-l", action="store_true",
                        help="if files in it are still open, detach it now anyway; the daemon ends when they close")
    umount.set_defaults(func=_umount)

    helper = commands.add_parser("install-helper", help=f"install {HELPER_PATH} for mount -t walrusfs")
    helper.set_defaults(func=lambda args: install_helper())


def _mkfs(args: argparse.Namespace) -> int:
    from .mkfs import run

    return run(args)


def _umount(args: argparse.Namespace) -> int:
    from .umount import run

    return run(args)


def _mount(args: argparse.Namespace) -> int:
    from .mount import mount
    from .mount_options import MountOptions

    if args.mount_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    options = MountOptions.parse(args.options)
    for name in ("key", "committee", "writer_key"):
        if getattr(args, name):
            setattr(options, name, str(getattr(args, name).resolve()))
    options.takeover = options.takeover or args.takeover
    if is_capability(args.source):  # checked whole before anything is mounted
        from .mount import capability_state

        capability = ReadCapability.parse(args.source)
        state = capability_state(capability, options.home)
        options.fsname = f"walrusfs:{state.root.name}"  # never the capability: /proc/mounts is world-readable
        return mount(state, args.mountpoint.resolve(), options, args.foreground, capability)
    options.fsname = args.source
    return mount(resolve_source(args.source, options.home), args.mountpoint.resolve(), options, args.foreground)


def install_helper() -> int:
    """Write /usr/sbin/mount.walrusfs, which mount(8) runs for 'mount -t walrusfs'."""
    walrusfs = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "walrusfs" else Path(
        shutil.which("walrusfs") or sys.executable).resolve()
    if walrusfs.name != "walrusfs":
        walrusfs = Path(sys.executable).with_name("walrusfs")
    script = ("#!/bin/sh\n# Installed by walrusfs install-helper: mount -t walrusfs SOURCE DIR [-o OPTIONS]\n"
              f'exec "{walrusfs}" mount "$@"\n')
    try:
        HELPER_PATH.write_text(script)
        HELPER_PATH.chmod(0o755)
    except OSError as error:
        raise UserError(f"cannot write {HELPER_PATH}: {error.strerror} (run as root)") from error
    print(f"installed {HELPER_PATH} -> {walrusfs}")
    return 0
