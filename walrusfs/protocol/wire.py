"""The JSON bodies nodes answer with, as types both sides share (docs/node-api.md): the certified
feed page, a node's health, its repair status, and the error body of every refusal.

The node builds a body with ``to_dict()``; a reader (the blob client, a peer, the cluster tools)
parses it with ``from_dict()``, which checks every field's type and raises WireError naming the
field, so a malformed or foreign answer is refused with a message instead of a KeyError deep in the
caller. ``to_dict()`` writes the keys in the order the node always wrote them, so the JSON on the
wire is what it was before these types existed: old readers see no change.

Versions: the feed page is a format (peers keep cursors into it); a page without a ``format`` field
is format 1, the only one so far, and a reader refuses a higher one with a message to upgrade.
Health, repair status and error bodies are open records: readers ignore fields they do not know,
and fields are only ever added (docs/node-api.md), so they carry no version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

FEED_FORMAT = 1


class WireError(ValueError):
    """A node's JSON body without the shape its route promises."""


def _mapping(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise WireError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _get(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str, default: Any = MISSING) -> Any:
    """data[name], checked to be of ``kind`` (a bool is no number here); ``default`` if it may be absent."""
    if name not in data:
        if default is not MISSING:
            return default
        raise WireError(f"{what}: field {name!r} is missing")
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise WireError(f"{what}: field {name!r} must be {names}, not {json_type(value)}")
    return value


def json_type(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


# --- errors ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorBody:
    """``{"error": code, "message": what happened and what to do, ...extra fields}``."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}

    @classmethod
    def from_dict(cls, data: object) -> ErrorBody:
        what = "error body"
        body = _mapping(data, what)
        extra = {key: value for key, value in body.items() if key not in ("error", "message")}
        return cls(_get(body, "error", str, what), _get(body, "message", str, what), extra)


# --- the certified feed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedEntry:
    seq: int
    blob_id: str
    certificate: str  # the certificate's JSON text, verified by the reader
    invalid: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "blob_id": self.blob_id, "certificate": self.certificate, "invalid": self.invalid}

    @classmethod
    def from_dict(cls, data: object, what: str = "feed entry") -> FeedEntry:
        entry = _mapping(data, what)
        return cls(_get(entry, "seq", int, what), _get(entry, "blob_id", str, what),
                   _get(entry, "certificate", str, what), _get(entry, "invalid", bool, what, False))


@dataclass(frozen=True)
class FeedPage:
    """A page of ``GET /v1/certified``: continue from ``next`` while ``more``; a new ``instance``
    means the node restarted and renumbered (read again from 0)."""

    instance: str
    entries: list[FeedEntry]
    next: int
    more: bool
    format: int = FEED_FORMAT

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"instance": self.instance, "entries": [entry.to_dict() for entry in self.entries],
                                "next": self.next, "more": self.more}
        if self.format != 1:  # format 1 is the page without the field, as nodes always wrote it
            body["format"] = self.format
        return body

    @classmethod
    def from_dict(cls, data: object) -> FeedPage:
        what = "certified feed page"
        page = _mapping(data, what)
        version = _get(page, "format", int, what, 1)
        if version != FEED_FORMAT:
            raise WireError(f"{what} of format {version}, this walrusfs reads format {FEED_FORMAT}: "
                            "upgrade walrusfs to read that node's feed")
        entries = _get(page, "entries", list, what)
        return cls(_get(page, "instance", str, what),
                   [FeedEntry.from_dict(entry, f"{what}, entry {i}") for i, entry in enumerate(entries)],
                   _get(page, "next", int, what), _get(page, "more", bool, what))


# --- health ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``. ``public_key`` (the node's signing key, base64, as in the committee) came
    later: None from a node that predates it. ``standby`` (the node is in no committee of its epoch:
    joining, or retired; docs/epochs.md) came with epochs: None from a node that predates them (which is
    never in standby)."""

    ok: bool
    node_id: str
    epoch: int
    n_shards: int
    shards: list[int]
    blobs: int
    bytes: int
    quarantined: int
    public_key: str | None = None
    standby: bool | None = None
    free_bytes: int | None = None  # free on the node's data disk; None from a node that predates it

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, "node_id": self.node_id}
        if self.public_key is not None:
            body["public_key"] = self.public_key
        body.update({"epoch": self.epoch, "n_shards": self.n_shards, "shards": list(self.shards)})
        if self.standby is not None:
            body["standby"] = self.standby
        body.update({"blobs": self.blobs, "bytes": self.bytes, "quarantined": self.quarantined})
        if self.free_bytes is not None:
            body["free_bytes"] = self.free_bytes
        return body

    @classmethod
    def from_dict(cls, data: object) -> Health:
        what = "node health"
        body = _mapping(data, what)
        shards = _get(body, "shards", list, what)
        if not all(isinstance(shard, int) and not isinstance(shard, bool) for shard in shards):
            raise WireError(f"{what}: field 'shards' must be a list of integers")
        return cls(_get(body, "ok", bool, what), _get(body, "node_id", str, what), _get(body, "epoch", int, what),
                   _get(body, "n_shards", int, what), shards, _get(body, "blobs", int, what),
                   _get(body, "bytes", int, what), _get(body, "quarantined", int, what),
                   _get(body, "public_key", (str, type(None)), what, None),
                   _get(body, "standby", (bool, type(None)), what, None),
                   _get(body, "free_bytes", (int, type(None)), what, None))


# --- repair status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrubStatus:
    interval: float  # seconds between passes (0: off)
    passes: int
    objects: int
    bytes: int
    rot_found: int
    missing_found: int
    position: int  # blobs into the current pass
    last_pass_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> ScrubStatus:
        return cls(**_typed_fields(cls, data, "scrub status"))


@dataclass(frozen=True, kw_only=True)
class RepairStatus:
    """``GET /v1/repair/status``: what self-healing did since the node started (docs/repair.md)."""

    node_id: str
    enabled: bool
    certified_blobs: int
    invalid_blobs: int
    queued_blobs: int
    active_blobs: int
    retrying_blobs: int
    missing_slivers: int
    missing_found: int
    recovered_slivers: int
    failed_attempts: int
    bytes_fetched: int
    bytes_lost: int
    bytes_recovered: int
    feed_bytes: int
    metadata_fetched: int
    certificates_learned: int
    invalid_found: int
    invalid_learned: int
    # Added with disk-full handling; absent from the answers of nodes that predate it.
    disk_full: bool = False
    disk_full_since: float | None = None  # Unix time
    disk_full_attempts: int = 0
    rebuilt_waiting_bytes: int = 0
    peers: int
    synced_peers: int
    idle: bool
    scrub: ScrubStatus

    @property
    def state(self) -> str:
        """One word for an operator: disk full, whole, syncing (peers' feeds not all read) or repairing."""
        return ("disk full" if self.disk_full else "whole" if self.idle
                else "syncing" if self.synced_peers < self.peers else "repairing")

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["scrub"] = self.scrub.to_dict()
        return body

    @classmethod
    def from_dict(cls, data: object) -> RepairStatus:
        what = "repair status"
        values = _typed_fields(cls, data, what, skip=("scrub",))
        return cls(**values, scrub=ScrubStatus.from_dict(_get(_mapping(data, what), "scrub", dict, what)))


# The JSON types of the annotations above (they are strings under ``from __future__ import annotations``).
_KINDS: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float),
                                       "float | None": (int, float, type(None))}


def _typed_fields(cls: type, data: object, what: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    body = _mapping(data, what)
    return {f.name: _get(body, f.name, _KINDS[str(f.type)], what, f.default) for f in fields(cls)
            if f.name not in skip}
