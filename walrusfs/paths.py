"""Where walrusfs keeps things by default, in one place: the state home and the bundled cluster.

The home is ``--home``/``-o home=`` if given, else $WALRUSFS_HOME, else ~/.local/share/walrusfs of
the user as the password database names it. Not $HOME: mount(8) drops HOME before it runs
mount.walrusfs, so a name resolved from $HOME in mkfs would mean another directory (another
filesystem) under ``mount -t walrusfs``. WALRUSFS_HOME does reach the helper. Everything below is
resolved when asked, not at import, because ``walrusfs --home DIR`` sets $WALRUSFS_HOME after the
modules are loaded.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

FS_HOME_ENV = "WALRUSFS_HOME"


def user_home() -> Path:
    """The running user's home directory from the password database, whatever $HOME says (mount(8)
    drops HOME, so this is what every command, run directly or by mount(8), agrees on)."""
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid with no passwd entry (containers): all that is left is $HOME
        return Path.home()


def walrusfs_home(home: str | Path | None = None) -> Path:
    """The state home: ``home`` if given, else $WALRUSFS_HOME, else ~/.local/share/walrusfs."""
    if home:
        return Path(home).expanduser().resolve()
    if os.environ.get(FS_HOME_ENV):
        return Path(os.environ[FS_HOME_ENV]).expanduser().resolve()
    return user_home() / ".local/share/walrusfs"


def fs_home(home: str | Path | None = None) -> Path:
    """Where filesystems' local state lives: ``<home>/fs/NAME``."""
    return walrusfs_home(home) / "fs"


def cluster_dir() -> Path:
    """The bundled local network (``walrusfs cluster``): ``<home>/cluster``, so that a $WALRUSFS_HOME
    holds its filesystems and the network they were made on together."""
    return walrusfs_home() / "cluster"
