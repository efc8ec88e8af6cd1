"""A storage node's configuration file (TOML), checked before the node starts.

    node_id = "node-0"
    listen = "127.0.0.1:31400"
    data_dir = "data"                 # relative paths are relative to this file
    signing_key = "node.key"
    committee = "../committee.toml"
    max_blob_size = 1073741824        # optional, bytes; bounds the sliver sizes accepted
    log_level = "info"                # optional

    [repair]                          # optional; self-healing (docs/repair.md), defaults below
    enabled = true                    # false: never recover slivers or scrub (serving is unaffected)
    sync_interval = 30.0              # seconds between polls of each peer's certified-blob feed
    grace = 30.0                      # seconds after the writer last sent a blob's parts before repairing it
    concurrency = 4                   # blobs recovered at once
    rate = 268435456                  # bytes/s of recovery symbols fetched, at most
    serve_workers = 2                 # threads that build recovery symbols for peers (not the foreground pool)
    serve_queue = 16                  # symbol requests waiting beyond that are refused with 429
    scrub_interval = 86400.0          # seconds between the starts of two scrub passes (0: never)
    scrub_rate = 52428800             # bytes/s the scrubber reads and verifies, at most
    retry_delay = 1.0                 # seconds before a failed blob's first retry; doubled per attempt, max 60

    [http]                            # optional; connection caps (docs/node-api.md, "Memory")
    max_connections = 2048            # client connections held at once; more are answered 503
    max_connections_per_peer = 256    # of them from one IP address (at most max_connections)

    [epochs]                          # optional; committee changes (docs/epochs.md)
    proposers = ["<base64 ed25519>"]  # operator keys whose proposals of the next committee it considers

    [lifecycle]                       # optional; blob claims and expiry (docs/node-api.md, "Claims")
    default_term_days = 365.0         # a claim made without an expiry (and a blob stored before claims)
    max_term_days = 730.0             # a requested expiry further out is capped to this from now
    sweep_interval = 3600.0           # seconds between passes that delete blobs whose claims all expired

    [quotas]                          # optional; bytes each writer key may have claimed here
    default = 0                       # for keys not listed; 0: no cap
    "<base64 writer key>" = 1099511627776
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.errors import UserError
from walrusfs.keys import decode_public_key, load_key, public_bytes
from walrusfs.protocol.committee import Committee
from walrusfs.redstuff import MAX_BLOB_LENGTH

DEFAULT_MAX_BLOB_SIZE = 1 << 30
_KNOWN = {"node_id", "listen", "data_dir", "signing_key", "committee", "max_blob_size", "log_level", "repair",
          "http", "epochs", "lifecycle", "quotas", "handover"}
DAY = 86400.0


def _table_settings(cls: Any, data: object, table: str) -> dict[str, Any]:
    """A config table's settings, each as given or the dataclass's default. UserError, naming the
    table, when it is not a table or names a setting ``cls`` does not have."""
    if not isinstance(data, dict):
        raise UserError(f"[{table}] must be a table")
    unknown = sorted(data.keys() - set(cls.__dataclass_fields__))
    if unknown:
        raise UserError(f"[{table}]: unknown settings {', '.join(unknown)} "
                        f"(known: {', '.join(cls.__dataclass_fields__)})")
    defaults = cls()
    return {name: data.get(name, getattr(defaults, name)) for name in cls.__dataclass_fields__}


@dataclass(frozen=True)
class HTTPConfig:
    """The ``[http]`` table: how many connections the node holds (each costs memory, see
    docs/node-api.md); one over a cap is answered 503 ``too_many_connections`` and closed."""

    max_connections: int = 2048
    max_connections_per_peer: int = 256

    @classmethod
    def from_dict(cls, data: object) -> HTTPConfig:
        values = _table_settings(cls, data, "http")
        for name, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
                raise UserError(f"[http] {name} must be an integer in [1, 1000000], got {value!r}")
        if values["max_connections_per_peer"] > values["max_connections"]:
            raise UserError("[http] max_connections_per_peer must be at most max_connections, so that one "
                            "address cannot hold every connection")
        return cls(**values)


@dataclass(frozen=True)
class EpochsConfig:
    """The ``[epochs]`` table: who may propose the next committee to this node (docs/epochs.md). No
    proposers: the node signs no proposal, and still adopts links signed by others."""

    proposers: frozenset[bytes] = frozenset()  # raw ed25519 public keys

    @classmethod
    def from_dict(cls, data: object) -> EpochsConfig:
        if not isinstance(data, dict):
            raise UserError("[epochs] must be a table")
        unknown = sorted(data.keys() - {"proposers"})
        if unknown:
            raise UserError(f"[epochs]: unknown settings {', '.join(unknown)} (known: proposers)")
        texts = data.get("proposers", [])
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise UserError("[epochs] proposers must be a list of base64 ed25519 public keys")
        keys = set()
        for text in texts:
            try:
                keys.add(decode_public_key(text))
            except ValueError as error:
                raise UserError(f"[epochs] proposers: bad public key {text[:60]!r}: {error}") from error
        return cls(frozenset(keys))


@dataclass(frozen=True)
class LifecycleConfig:
    """The ``[lifecycle]`` table: how long the node keeps a blob nobody renews. Terms are in days
    (fractions allowed: a test runs with a term of seconds); the node grants at most ``max_term_days``
    from the time of the request, whatever the writer asks for."""

    default_term_days: float = 365.0
    max_term_days: float = 730.0
    sweep_interval: float = 3600.0

    @property
    def default_term(self) -> float:
        return self.default_term_days * DAY

    @property
    def max_term(self) -> float:
        return self.max_term_days * DAY

    @classmethod
    def from_dict(cls, data: object) -> LifecycleConfig:
        values = _table_settings(cls, data, "lifecycle")
        for name, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise UserError(f"[lifecycle] {name} must be a positive number, got {value!r}")
            values[name] = float(value)
        if values["default_term_days"] > values["max_term_days"]:
            raise UserError("[lifecycle] default_term_days must be at most max_term_days")
        return cls(**values)


@dataclass(frozen=True)
class HandoverConfig:
    """The ``[handover]`` table (docs/epochs.md, Handover): how long a new holder waits for one answer
    of another node (a listing page, a sliver, a record) before it counts that node as not answering
    and goes on (retry with backoff, another node's copy, a rebuild from recovery symbols)."""

    request_timeout: float = 20.0  # seconds; generous, since a sliver can be large and a node busy

    @classmethod
    def from_dict(cls, data: object) -> HandoverConfig:
        values = _table_settings(cls, data, "handover")
        timeout = values["request_timeout"]
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0.5 <= timeout <= 3600:
            raise UserError(f"[handover] request_timeout must be a number of seconds in [0.5, 3600], got {timeout!r}")
        return cls(float(timeout))


@dataclass(frozen=True)
class QuotaConfig:
    """The ``[quotas]`` table: the bytes each writer key (base64, as in committee.toml) may have
    claimed on this node; ``default`` for the keys not listed. 0 means no cap."""

    default: int = 0
    keys: tuple[tuple[bytes, int], ...] = ()

    def cap(self, writer: bytes) -> int:
        return dict(self.keys).get(writer, self.default)

    @classmethod
    def from_dict(cls, data: object) -> QuotaConfig:
        if not isinstance(data, dict):
            raise UserError("[quotas] must be a table")
        default, keys = 0, []
        for name, value in data.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"[quotas] {name[:60]!r} must be a number of bytes (0: no cap), got {value!r}")
            if name == "default":
                default = value
                continue
            try:
                keys.append((decode_public_key(name), value))
            except ValueError as error:
                raise UserError(f"[quotas]: {name[:60]!r} is neither 'default' nor a base64 writer key: "
                                f"{error}") from error
        return cls(default, tuple(keys))


@dataclass(frozen=True)
class RepairConfig:
    """The ``[repair]`` table: how hard self-healing may work (docs/repair.md explains the defaults)."""

    enabled: bool = True
    sync_interval: float = 30.0
    grace: float = 30.0
    concurrency: int = 4
    rate: int = 256 << 20
    serve_workers: int = 2
    serve_queue: int = 16
    scrub_interval: float = 86400.0
    scrub_rate: int = 50 << 20
    retry_delay: float = 1.0

    @classmethod
    def from_dict(cls, data: object) -> RepairConfig:
        if not isinstance(data, dict):
            raise UserError("[repair] must be a table")
        defaults = cls()
        unknown = sorted(data.keys() - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"[repair]: unknown settings {', '.join(unknown)} "
                            f"(known: {', '.join(cls.__dataclass_fields__)})")
        values: dict[str, Any] = {}
        for name, field_ in cls.__dataclass_fields__.items():
            value = data.get(name, getattr(defaults, name))
            kind = type(getattr(defaults, name))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise UserError(f"[repair] {name} must be a {kind.__name__}, got {value!r}")
            minimum = 0 if name in ("scrub_interval", "grace") else 1 if kind is int else 0.01
            if kind is not bool and value < minimum:
                raise UserError(f"[repair] {name} must be at least {minimum}")
            values[field_.name] = value
        return cls(**values)


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    node_id: str
    host: str
    port: int
    data_dir: Path
    signing_key_path: Path
    committee_path: Path
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    log_level: str = "info"
    repair: RepairConfig = RepairConfig()
    http: HTTPConfig = HTTPConfig()
    epochs: EpochsConfig = EpochsConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    quotas: QuotaConfig = QuotaConfig()
    handover: HandoverConfig = HandoverConfig()

    @classmethod
    def load(cls, path: Path | str) -> NodeConfig:
        path = Path(path).resolve()
        try:
            data = tomllib.loads(path.read_text())
        except OSError as error:
            raise UserError(f"cannot read node config {path}: {error.strerror}") from error
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"node config {path} is not valid TOML: {error}") from error
        try:
            return cls._from_dict(path, data)
        except UserError as error:
            raise UserError(f"node config {path}: {error}") from error

    @classmethod
    def _from_dict(cls, path: Path, data: dict[str, Any]) -> NodeConfig:
        unknown = sorted(data.keys() - _KNOWN)
        if unknown:
            raise UserError(f"unknown settings {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})")

        def text(name: str) -> str:
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise UserError(f"{name!r} must be set to a non-empty string")
            return value

        def relative(name: str) -> Path:
            return (path.parent / text(name)).resolve()

        host, sep, port_text = text("listen").rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UserError(f"listen = {data['listen']!r} must be HOST:PORT, e.g. 127.0.0.1:31400")
        max_blob = data.get("max_blob_size", DEFAULT_MAX_BLOB_SIZE)
        if not isinstance(max_blob, int) or not 0 < max_blob <= MAX_BLOB_LENGTH:
            raise UserError(f"max_blob_size must be an integer in [1, {MAX_BLOB_LENGTH}]")
        log_level = data.get("log_level", "info")
        if log_level not in ("debug", "info", "warning", "error"):
            raise UserError("log_level must be one of debug, info, warning, error")
        return cls(path, text("node_id"), host.strip("[]"), int(port_text), relative("data_dir"),
                   relative("signing_key"), relative("committee"), max_blob, log_level,
                   RepairConfig.from_dict(data.get("repair", {})), HTTPConfig.from_dict(data.get("http", {})),
                   EpochsConfig.from_dict(data.get("epochs", {})), LifecycleConfig.from_dict(data.get("lifecycle", {})),
                   QuotaConfig.from_dict(data.get("quotas", {})), HandoverConfig.from_dict(data.get("handover", {})))

    def load_identity(self) -> tuple[Committee, Ed25519PrivateKey]:
        """The committee of the config file and this node's key, checked against each other where the
        committee names the node. A node it does not name may be joining (it starts in standby,
        nodes.epochs), unless its key is another member's: then the node id is wrong."""
        committee = Committee.load(self.committee_path)
        key = load_key(self.signing_key_path)
        own = public_bytes(key)
        if not committee.has_node(self.node_id):
            others = [node.id for node in committee.nodes if node.public_key == own]
            if others:
                raise UserError(f"node id {self.node_id!r} is not in committee {self.committee_path}, and its "
                                f"signing key {self.signing_key_path} is the one of {others[0]!r}: fix node_id")
            return committee, key
        if own != committee.node(self.node_id).public_key:
            raise UserError(
                f"signing key {self.signing_key_path} does not match the public key the committee "
                f"lists for {self.node_id!r}"
            )
        return committee, key
