"""A filesystem's local state directory and its settings (fs.toml).

    <state>/fs.toml       settings fixed at mkfs (id, committee, key, sizes)
    <state>/metadata.db   the SQLite metadata (schema.py)
    <state>/staging/      blocks written but not yet in a certified blob, one file per block
    <state>/cache/        whole blobs read back from the network, bounded, LRU
    <state>/lock          held by the one writable mount
    <state>/fs.key        the filesystem's own key: owns its ID and signs its root record (back it up!)
    <state>/snapshot.json the last metadata snapshot published to the network (snapshot.py)
    <state>/writer-id     this state's identity as the filesystem's writer (docs/writer-lease.md)
    <state>/snapshots/    databases of older snapshots, restored for read-only mounts
    <state>/committee-chain.json  the committee chain verified from fs.toml's committee file to the
                          newest epoch seen (walrusfs.client.epochs; re-verified whenever it is loaded)
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

from ..errors import UserError
from ..paths import FS_HOME_ENV, fs_home, user_home, walrusfs_home  # noqa: F401 (re-exported)

# Names in fs.toml's ``encryption`` setting (encryption.py says what they mean).
NO_ENCRYPTION = "none"
AES_256_GCM = "aes-256-gcm-v1"


@dataclass(frozen=True)
class FsSettings:
    fs_id: str
    committee: str  # path of the committee file
    writer_key: str  # path of the filesystem's write key
    block_size: int = 1 << 20
    blob_size: int = 32 << 20  # target size of a packed blob
    cache_size: int = 2 << 30  # read cache bound, bytes
    staging_limit: int = 4 << 30  # writes wait when this many bytes are staged
    upload_delay: float = 2.0  # seconds a partial blob waits for more blocks
    # Keep a copy of each uploaded blob in the read cache (reads of fresh data stay local); false for
    # write-mostly filesystems (backups), whose writes would otherwise push out what is read.
    cache_after_upload: bool = True
    fs_key: str = ""  # path of the filesystem's own key (fs_id is its hash)
    snapshot_interval: float = 900.0  # seconds between metadata snapshots while changed (0: only at unmount)
    snapshot_keep_last: int = 10  # retention: the newest N snapshots ...
    snapshot_keep_daily: int = 14  # ... plus the newest of each of the last N days ...
    snapshot_keep_monthly: int = 12  # ... plus the newest of each of the last N months
    # How data and metadata are sealed before they leave this machine (encryption.py). Filesystems
    # made before encryption have no such line: "none". mkfs makes "aes-256-gcm-v1" unless told not to.
    encryption: str = "none"
    # How long the nodes keep each blob unless the mount renews it (days; docs/node-api.md "Claims").
    # Filesystems made before claims have no such line: the default.
    blob_term_days: float = 365.0
    # Garbage collection (docs/gc.md): a mount runs a pass every gc_interval seconds (0: only when
    # asked, walrusfs gc); blobs whose live fraction is below compact_below are repacked (0: never).
    gc_interval: float = 3600.0
    compact_below: float = 0.5

    def dump(self) -> str:
        # tomli_w quotes and escapes strings: a path with an apostrophe or a quote stays one string.
        return tomli_w.dumps(asdict(self))


@dataclass(frozen=True)
class FsState:
    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / "fs.toml"

    @property
    def db_path(self) -> Path:
        return self.root / "metadata.db"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    @property
    def fs_key_path(self) -> Path:
        return self.root / "fs.key"

    @property
    def snapshot_state(self) -> Path:
        return self.root / "snapshot.json"

    @property
    def snapshot_manifest(self) -> Path:
        return self.root / "snapshot.manifest"

    @property
    def mounted_marker(self) -> Path:
        """Present while a mount runs: found at mount time, it says the last one did not end cleanly."""
        return self.root / "mounted"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def chain_path(self) -> Path:
        return self.root / "committee-chain.json"

    def load_settings(self) -> FsSettings:
        try:
            data = tomllib.loads(self.settings_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.root} is not a walrusfs filesystem (no fs.toml): "
                            "create one with 'walrusfs mkfs'") from None
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise UserError(f"cannot read {self.settings_path}: {error}") from error
        try:
            return FsSettings(**data)
        except TypeError as error:
            raise UserError(f"{self.settings_path}: {error}") from error


def resolve_source(source: str, home: str | Path | None = None) -> FsState:
    """A mount SOURCE is a filesystem name (under the walrusfs home, see walrusfs_home) or a state
    directory path. mkfs, mount, the mount.walrusfs helper and the other commands all resolve
    names here, so one name means one directory whichever way it is mounted."""
    if "/" in source:
        return FsState(Path(source).expanduser().resolve())
    if source.startswith("walrusfs:"):
        source = source.split(":", 1)[1]
    if not source or source in (".", ".."):
        raise UserError(f"{source!r} is not a filesystem name")
    return FsState(fs_home(home) / source)
