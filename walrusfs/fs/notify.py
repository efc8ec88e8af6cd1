"""The systemd notification protocol (sd_notify), for a mount run as a ``Type=notify`` service.

Pure Python, no libsystemd: a message is one datagram of ``KEY=VALUE`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import trio

from .mount_status import MountStatus

log = logging.getLogger(__name__)

STATUS_INTERVAL = 10.0  # seconds between STATUS= updates (what `systemctl status` shows)


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to the service manager. True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name: not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        # Telling systemd is best effort; the mount itself is fine.
        log.warning("could not notify the service manager (%s): %s", address.lstrip("\0"), error)
        return False
    return True


def describe(status: MountStatus) -> str:
    """One line for ``systemctl status``: the figures an operator looks at first."""
    from .status import format_bytes  # status.py imports metrics; keep this module import-light

    line = (f"{format_bytes(status.pending_bytes)} staged, "
            f"{status.uploads_in_flight or 0} uploads in flight, "
            f"{format_bytes(status.uploaded_bytes or 0)} uploaded")
    if status.upload_failures:
        line += f", {status.upload_failures} upload failures (last: {status.last_error})"
    return line


async def report_status(status_fn: Callable[[], MountStatus], interval: float = STATUS_INTERVAL) -> None:
    """Keep systemd's STATUS= line current while the mount runs (no-op outside systemd)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    while True:
        await trio.sleep(interval)
        sd_notify("STATUS=mounted: " + describe(status_fn()))
