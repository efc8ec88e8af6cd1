"""The mount options: what ``-o`` (and an fstab line) may say, parsed and checked before anything
is mounted, so that a typo fails the mount with a message instead of silently doing something else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError
from .metrics import parse_listen
from .mount_log import DEFAULT_MAX_BYTES
from .writer_lease import DEFAULT_TERM, parse_term

# How often a read capability's mount of the latest snapshot looks for a newer one (follow.py).
DEFAULT_FOLLOW_INTERVAL = 30.0

# How long one upload may take to reach a certificate before it fails (fsync then says EIO and the
# data stays staged for a retry): long enough for a loaded network, short enough to say "no quorum".
# A snapshot's root record is offered this long too, also to nodes that are down.
DEFAULT_STORE_DEADLINE = 30.0

# Every mount option, for `walrusfs mount --help`, the man page and the unknown-option error.
OPTION_HELP: dict[str, str] = {
    "ro": "read-only",
    "rw": "read-write (the default)",
    "allow_other": "let users other than the one who mounted use the mount (off by default; a non-root "
                   "mount needs user_allow_other in /etc/fuse.conf)",
    "nonempty": "mount even on a directory that is not empty (its entries are hidden while mounted)",
    "home=DIR": "where filesystems' local state lives: DIR/fs/NAME (as WALRUSFS_HOME; for fstab, since "
                "mount(8) drops HOME)",
    "snapshot=N": "mount metadata snapshot N, read-only (see 'walrusfs snapshots')",
    "follow_interval=SECONDS": "a read capability's mount of the latest snapshot: how often to look for a newer "
                               "snapshot and switch to it (default 30; 0: stay on the one mounted)",
    "key=PATH": "the filesystem's key: with no local state, restore it from the network first",
    "committee=PATH": "with key=: the committee file (default: the bundled network's)",
    "writer_key=PATH": "with key=: a writer key the committee accepts (default: the bundled network's)",
    "takeover": "take the filesystem's writer lease over from a writer that died (docs/writer-lease.md)",
    "lease_term=SECONDS": "how long the nodes keep this writer's lease between renewals (default 30; a dead "
                          "writer blocks others this long)",
    "store_deadline=SECONDS": f"how long one upload may take to reach a certificate before fsync says EIO "
                              f"(default {DEFAULT_STORE_DEADLINE:.0f}; the data stays staged and is retried), and "
                              "how long a snapshot's root record keeps being offered to nodes that are down",
    "metrics=HOST:PORT": "serve Prometheus metrics there",
    "metrics_textfile=PATH": "keep a node_exporter textfile there",
    "debug": "log every FUSE request (libfuse's debug output, in mount.log)",
    "log_max_size=MiB": f"rotate the daemon's log (STATE/mount.log) at this size, keeping 3 old ones "
                        f"(default {DEFAULT_MAX_BYTES >> 20})",
    "_netdev, defaults, auto, noauto, nofail, user, nouser, noatime, relatime, exec, noexec, suid, nosuid, dev, "
    "nodev, x-*": "for mount(8) and fstab: accepted, nothing to do",
}
IGNORED_OPTIONS = frozenset(("rw", "defaults", "_netdev", "auto", "noauto", "user", "nouser", "nofail",
                             "noatime", "relatime", "exec", "noexec", "suid", "nosuid", "dev", "nodev"))


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = False  # as FUSE filesystems do: only the user who mounted sees into it
    nonempty: bool = False  # mount over a directory with entries (hiding them)
    home: str | None = None  # where filesystems' local state lives (walrusfs_home)
    fsname: str | None = None  # the mount's source in /proc/mounts: the name the caller gave
    debug: bool = False
    metrics: str | None = None  # HOST:PORT of a Prometheus endpoint
    metrics_textfile: str | None = None  # a node_exporter textfile to keep rewriting
    log_max_size: int = DEFAULT_MAX_BYTES  # mount.log is rotated at this size
    extra: list[str] = field(default_factory=list)
    snapshot: int | None = None  # mount this older snapshot, read-only
    follow_interval: float = DEFAULT_FOLLOW_INTERVAL  # a read capability's mount: seconds between looks for a newer one
    key: str | None = None  # the filesystem's key: restore from the network when there is no local state
    committee: str | None = None  # with key: the committee file (default: the bundled network's)
    writer_key: str | None = None  # with key: the nodes' write key (default: the bundled network's)
    takeover: bool = False  # take the writer lease over from a writer that died (writer_lease.py)
    lease_term: float = DEFAULT_TERM  # seconds the nodes keep the writer lease between renewals
    store_deadline: float = DEFAULT_STORE_DEADLINE  # seconds an upload may take to reach a certificate

    @classmethod
    def parse(cls, text: str | None) -> MountOptions:
        options = cls()
        for item in filter(None, (text or "").split(",")):
            if item == "ro":
                options.read_only = True
            elif item in IGNORED_OPTIONS:
                continue  # for mount(8) and fstab, or what walrusfs does anyway
            elif item == "allow_other":
                options.allow_other = True
            elif item == "nonempty":
                options.nonempty = True
            elif item == "debug":
                options.debug = True
            elif item.startswith("home="):
                options.home = item.split("=", 1)[1]
                if not options.home:
                    raise UserError("mount option 'home=': give a directory (filesystems are DIR/fs/NAME)")
            elif item.startswith("snapshot="):
                value = item.split("=", 1)[1]
                if not value.isdigit():
                    raise UserError(f"snapshot={value!r}: give a snapshot number (see 'walrusfs snapshots')")
                options.snapshot = int(value)
                options.read_only = True
            elif item.startswith("follow_interval="):
                options.follow_interval = parse_follow_interval(item.split("=", 1)[1])
            elif item.split("=", 1)[0] in ("key", "committee", "writer_key") and "=" in item:
                name, value = item.split("=", 1)
                setattr(options, name, value)
            elif item == "takeover":
                options.takeover = True
            elif item.startswith("lease_term="):
                options.lease_term = parse_term(item.split("=", 1)[1])
            elif item.startswith("store_deadline="):
                options.store_deadline = parse_store_deadline(item.split("=", 1)[1])
            elif item.startswith("x-"):
                continue  # userspace-only fstab options (x-systemd.*)
            elif item.startswith("metrics="):
                try:  # checked here so a typo fails the mount, not silently the exporter
                    parse_listen(item.split("=", 1)[1])
                except ValueError as error:
                    raise UserError(f"mount option {item!r}: {error}") from None
                options.metrics = item.split("=", 1)[1]
            elif item.startswith("log_max_size="):
                value = item.split("=", 1)[1]
                if not value.isdigit() or int(value) < 1:
                    raise UserError(f"mount option {item!r}: give the log's size cap in MiB (a whole number, >= 1)")
                options.log_max_size = int(value) << 20
            elif item.startswith("metrics_textfile="):
                options.metrics_textfile = os.path.abspath(item.split("=", 1)[1])
                if not os.path.isdir(os.path.dirname(options.metrics_textfile)):
                    raise UserError(f"mount option {item!r}: its directory does not exist")
            else:
                known = ", ".join(name for name in OPTION_HELP if not name.startswith("_netdev"))
                raise UserError(f"unknown mount option {item!r} (known: {known}, and the generic mount(8) "
                                "ones; 'walrusfs mount --help' says what each does)")
        return options


def parse_follow_interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise UserError(f"follow_interval={text!r}: give seconds, e.g. follow_interval=30 (0: do not follow)") from None
    if not (seconds == 0 or 0.5 <= seconds <= 86400):  # nan fails here too
        raise UserError(f"follow_interval={text}: 0 (do not follow) or between 0.5 and 86400 seconds")
    return seconds


def parse_store_deadline(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise UserError(f"store_deadline={text!r}: give seconds, e.g. store_deadline=30") from None
    if not 1.0 <= seconds <= 3600.0:  # under a second no blob certifies; nan and inf fail here too
        raise UserError(f"store_deadline={text}: between 1 and 3600 seconds")
    return seconds
