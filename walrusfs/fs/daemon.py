"""Running the mount daemon in the background: fork, a new session, the log as its output, and a
pipe on which the daemon says "ok" once it is mounted (or why it could not mount).

The mount happens in the child, but the caller waits for its word, so a failure reaches the caller
with a message and exit status, as with any mount(8) helper.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ..errors import UserError
from .mount_log import log_to_file

log = logging.getLogger(__name__)

READY = "ok"


def run_daemon(body: Callable[[int], None], log_path: Path, log_max_size: int) -> None:
    """Run ``body(ready_fd)`` in a daemon process; ``body`` calls ``tell_caller(ready_fd, READY)`` once
    mounted. Returns in the caller once it has; raises UserError with the daemon's reason if it
    did not. Never returns in the daemon."""
    read_end, write_end = os.pipe()
    level = logging.getLogger().getEffectiveLevel()
    pid = os.fork()
    if pid:  # the caller: wait for the child to say it is mounted
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == READY:
            return
        os.waitpid(pid, 0)
        raise UserError(message or f"the mount daemon died before mounting (see its log: {log_path})")
    os.close(read_end)
    os.setsid()
    status = 1
    try:
        log_to_file(log_path, level, log_max_size)
        body(write_end)
        status = 0
    except UserError as error:
        tell_caller(write_end, str(error))
    except BaseException as error:
        log.exception("mount daemon failed")
        tell_caller(write_end, f"mount failed: {error}")
    finally:
        os._exit(status)


def tell_caller(fd: int, message: str) -> None:
    """Tell the waiting caller ``message`` (READY, or why the mount failed) and close the pipe."""
    with suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)
