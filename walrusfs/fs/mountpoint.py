"""The mount point itself: is it fit to mount on, is a walrusfs mount already live there, and
detaching one whose daemon died."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from .mount_options import MountOptions
from .mount_status import MountStatus


def clear_dead_mount(mountpoint: Path) -> None:
    """A walrusfs mount whose daemon died (kill -9, OOM) leaves its mount point answering ENOTCONN;
    detach it so the filesystem can be mounted again."""
    try:
        os.statvfs(mountpoint)  # stat() may be answered from the kernel's cache; statfs reaches the daemon
        return
    except OSError as error:
        if error.errno not in (errno.ENOTCONN, errno.ECONNABORTED):  # ECONNABORTED: it died mid-request
            return
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mountpoint) and fields[2] == "fuse.walrusfs":
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
            print(f"detached {mountpoint}: its mount daemon had died", file=sys.stderr)
            return


def mounted_here(mountpoint: Path) -> MountStatus | None:
    """The status of the live walrusfs mount on ``mountpoint`` itself, or None if there is none."""
    from .status import read_status_within

    if not any(point == mountpoint and fstype == "fuse.walrusfs" for point, fstype in _mounts()):
        return None
    try:
        return read_status_within(mountpoint, timeout=10.0)
    except UserError:
        return None  # dead or wedged: clear_dead_mount's business, or the kernel refuses the mount


def _mounts() -> list[tuple[Path, str]]:
    from .status import _mounts as mounts

    return mounts()


def check_mountpoint(mountpoint: Path, options: MountOptions) -> None:
    if not mountpoint.exists():
        raise UserError(f"mount point {mountpoint} does not exist: create it first (mkdir -p {mountpoint})")
    if not mountpoint.is_dir():
        raise UserError(f"mount point {mountpoint} is not a directory")
    if options.nonempty:
        return
    with os.scandir(mountpoint) as entries:
        names = [entry.name for _, entry in zip(range(3), entries, strict=False)]
    if names:
        raise UserError(f"mount point {mountpoint} is not empty (it holds {', '.join(map(repr, names))}"
                        f"{' ...' if len(names) == 3 else ''}): the mount would hide what is there. Mount on an "
                        "empty directory, or pass -o nonempty to hide them while mounted.")
