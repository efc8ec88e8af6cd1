"""The mount daemon's log, <state>/mount.log, rotated by size so that it cannot grow forever.

logging.handlers.RotatingFileHandler, not WatchedFileHandler plus logrotate: the daemon runs as the
user who mounted (no system logrotate configuration covers ~/.local/share), and a size cap needs
nothing outside the process. What bypasses Python's logging -- libfuse's ``-o debug`` output and an
unexpected traceback go straight to file descriptor 2 -- follows the rotation: after each one, fds 1
and 2 are pointed at the new file.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

DEFAULT_MAX_BYTES = 16 << 20  # per file; -o log_max_size=MiB changes it
BACKUPS = 3  # mount.log.1 .. mount.log.3 are kept: at most 4 x the cap on disk
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class MountLogHandler(RotatingFileHandler):
    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = BACKUPS) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups)
        self._redirect_standard_output()

    def doRollover(self) -> None:
        super().doRollover()
        self._redirect_standard_output()

    def _redirect_standard_output(self) -> None:
        if self.stream is not None:
            self.stream.flush()
            os.dup2(self.stream.fileno(), 1)
            os.dup2(self.stream.fileno(), 2)


def log_to_file(path: Path, level: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Make ``path`` (rotated at ``max_bytes``) the daemon's log and its stdout and stderr; stdin is
    /dev/null. The level the command line chose (walrusfs -v: debug) carries over."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    handler = MountLogHandler(path, max_bytes)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=min(level, logging.INFO), force=True, handlers=[handler])
