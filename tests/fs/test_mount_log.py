"""The mount daemon's log (<state>/mount.log) is rotated at a size cap (-o log_max_size=MiB), keeping
three old logs, and what is written to stderr outside Python's logging follows the rotation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from walrusfs.errors import UserError
from walrusfs.fs.mount_log import DEFAULT_MAX_BYTES
from walrusfs.fs.mount_options import MountOptions

# A daemon's logging, as mount.py sets it up after fork, in a process of its own (it takes over fds 0-2).
DAEMON = """
import logging, os, sys
from pathlib import Path
from walrusfs.fs.mount_log import log_to_file
log_to_file(Path(sys.argv[1]), logging.INFO, max_bytes=4096)
for i in range(400):
    logging.getLogger("walrusfs.test").info("line %04d %s", i, "x" * 60)
    if i == 200:
        os.write(2, b"RAW STDERR MIDWAY\\n")  # as libfuse's debug output is written
print("STDOUT AT THE END", flush=True)
os.write(2, b"RAW STDERR AT THE END\\n")
"""


def test_the_log_is_rotated_at_its_cap_and_stderr_follows(tmp_path: Path) -> None:
    log = tmp_path / "mount.log"
    subprocess.run([sys.executable, "-c", DAEMON, str(log)], check=True, timeout=60)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["mount.log", "mount.log.1", "mount.log.2", "mount.log.3"]  # three kept, older ones gone
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 4096 + 200, path
    current = log.read_text()
    assert "line 0399" in current and "STDOUT AT THE END" in current and "RAW STDERR AT THE END" in current
    assert "line 0000" not in "".join(path.read_text() for path in tmp_path.iterdir())


def test_log_max_size_option() -> None:
    assert MountOptions.parse(None).log_max_size == DEFAULT_MAX_BYTES
    assert MountOptions.parse("ro,log_max_size=5").log_max_size == 5 << 20
    for bad in ("log_max_size=", "log_max_size=0", "log_max_size=1.5", "log_max_size=big"):
        with pytest.raises(UserError, match="size cap in MiB"):
            MountOptions.parse(bad)
