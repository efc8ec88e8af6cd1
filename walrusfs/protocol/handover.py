"""What old and new holders of a shard say to each other at an epoch change (docs/epochs.md, Handover).

``ShardSynced`` is the new holder's signed statement that it stores every sliver of a shard: only on
it does the old holder delete its slivers of that shard. Signed bytes (format v1)::

    "walrusfs-shard-synced\\0" | u8 version | u64 epoch | u16 shard | u16 len | node id (utf-8)

``epoch`` is the epoch in which ``node_id`` holds ``shard`` (the one the handover leads into); the
statement is checked against that epoch's committee, found through the committee chain. It travels
as JSON: ``{"version": 1, "node_id", "epoch", "shard", "signature": base64}``.

Also here: the JSON of a shard's blob listing (``GET /v1/shards/{shard}/blobs``) and of a node's
handover status (``GET /v1/handover``), both ``"version": 1``.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..redstuff import BlobId, FormatError
from .committee import Committee

SYNCED_VERSION = 1
LISTING_VERSION = 1
STATUS_VERSION = 1
_SYNCED_DOMAIN = b"walrusfs-shard-synced\0"


class HandoverError(ValueError):
    """A synced statement that does not verify, or a listing or status that is not well formed."""


@dataclass(frozen=True)
class ShardSynced:
    """Node ``node_id``, holder of ``shard`` in ``epoch``, stores every sliver of that shard."""

    node_id: str
    epoch: int
    shard: int
    signature: bytes = b""
    version: int = SYNCED_VERSION

    def signed_bytes(self) -> bytes:
        node = self.node_id.encode()
        return b"".join([_SYNCED_DOMAIN, struct.pack("<BQH", self.version, self.epoch, self.shard),
                         struct.pack("<H", len(node)), node])

    def signed_by(self, key: Ed25519PrivateKey) -> ShardSynced:
        unsigned = ShardSynced(self.node_id, self.epoch, self.shard)
        return ShardSynced(self.node_id, self.epoch, self.shard, key.sign(unsigned.signed_bytes()))

    def verify(self, committee: Committee) -> None:
        """Raise HandoverError unless ``committee`` is of this statement's epoch, its sender holds
        the shard in it, and the signature is the sender's."""
        if self.version != SYNCED_VERSION:
            raise HandoverError(f"synced statement version {self.version} is not one this walrusfs reads")
        if committee.epoch != self.epoch:
            raise HandoverError(f"synced statement is for epoch {self.epoch}, checked against epoch {committee.epoch}")
        if not committee.has_node(self.node_id) or self.shard not in committee.shards_of(self.node_id):
            raise HandoverError(f"node {self.node_id!r} does not hold shard {self.shard} in epoch {self.epoch}: "
                                f"only the shard's new holder may say it is synced")
        try:
            key = Ed25519PublicKey.from_public_bytes(committee.node(self.node_id).public_key)
            key.verify(self.signature, self.signed_bytes())
        except (InvalidSignature, ValueError):
            raise HandoverError(f"the signature on the synced statement for shard {self.shard} is not "
                                f"{self.node_id!r}'s (epoch {self.epoch}): forged or corrupted") from None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "node_id": self.node_id, "epoch": self.epoch, "shard": self.shard,
                "signature": base64.b64encode(self.signature).decode()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardSynced:
        try:
            data = json.loads(text)
            if data["version"] != SYNCED_VERSION:
                raise HandoverError(f"synced statement version {data['version']} is not one this walrusfs "
                                    f"reads (it reads {SYNCED_VERSION}): upgrade walrusfs")
            epoch, shard = int(data["epoch"]), int(data["shard"])
            if not 0 <= epoch < 1 << 64 or not 0 <= shard < 1 << 16:
                raise ValueError("epoch or shard out of range")
            return cls(str(data["node_id"]), epoch, shard, base64.b64decode(data["signature"], validate=True))
        except HandoverError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise HandoverError(f"not a synced statement: {error}") from error


# --- the listing of a shard's blobs ------------------------------------------------------------------


@dataclass(frozen=True)
class BlobListing:
    """A page of the blobs of which a node stores a shard's sliver pair (or a part of it).

    ``next`` is the cursor for the following page (the last blob ID examined, which need not be in
    ``blobs``), None at the end. JSON: ``{"version": 1, "shard", "blobs": [id...], "next": id|null}``.
    """

    shard: int
    blobs: tuple[BlobId, ...]
    next: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"version": LISTING_VERSION, "shard": self.shard, "blobs": [str(b) for b in self.blobs],
                "next": self.next}

    @classmethod
    def from_json(cls, text: str | bytes) -> BlobListing:
        try:
            data = json.loads(text)
            if data["version"] != LISTING_VERSION:
                raise HandoverError(f"blob listing version {data['version']} is not one this walrusfs reads")
            following = data["next"]
            if following is not None:
                following = str(BlobId.parse(following))
            return cls(int(data["shard"]), tuple(BlobId.parse(b) for b in data["blobs"]), following)
        except HandoverError:
            raise
        except (KeyError, TypeError, ValueError, FormatError) as error:
            raise HandoverError(f"not a blob listing: {error}") from error


# --- a node's handover status ------------------------------------------------------------------------


@dataclass
class GainedShard:
    """A shard this node gained at ``epoch``, from ``source`` (its holder in the epoch before).

    state: ``copying`` (blobs still to fetch), ``synced`` (every sliver stored and verified).
    ``released``: the old holder acknowledged the synced statement (or is gone for good).
    """

    shard: int
    source: str
    epoch: int
    state: str = "copying"
    released: bool = False
    cursor: str | None = None  # the listing's cursor: pages before it are done
    blobs: int = 0  # blobs handled
    bytes_moved: int = 0  # bytes received for it: slivers, recovery symbols, metadata, certificates, listings
    bytes_to_move: int = 0  # bytes of the shard's slivers of the blobs listed so far
    rebuilt: int = 0  # slivers rebuilt from recovery symbols (old holder gone, slow or lying)

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "from": self.source, "epoch": self.epoch, "state": self.state,
                "released": self.released, "cursor": self.cursor, "blobs": self.blobs,
                "bytes_moved": self.bytes_moved, "bytes_to_move": self.bytes_to_move, "rebuilt": self.rebuilt}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GainedShard:
        return cls(int(data["shard"]), str(data["from"]), int(data["epoch"]), str(data["state"]),
                   bool(data["released"]), data.get("cursor"), int(data["blobs"]), int(data["bytes_moved"]),
                   int(data["bytes_to_move"]), int(data["rebuilt"]))


@dataclass
class HandedOffShard:
    """A shard this node held until ``epoch``, now held by ``target``; ``released`` once its new
    holder's synced statement arrived and this node's slivers of it were deleted."""

    shard: int
    target: str
    epoch: int
    released: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "to": self.target, "epoch": self.epoch, "released": self.released}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandedOffShard:
        return cls(int(data["shard"]), str(data["to"]), int(data["epoch"]), bool(data["released"]))


@dataclass
class HandoverStatus:
    """A node's handover: what ``GET /v1/handover`` answers and ``DATA/epochs/handover.json`` keeps.

    JSON: ``{"version": 1, "node_id", "epoch", "complete", "gaining": [...], "handing_off": [...]}``;
    ``complete``: every gained shard is synced (the node may sign the next committee).
    """

    node_id: str
    epoch: int
    gaining: dict[int, GainedShard] = field(default_factory=dict)
    handing_off: dict[int, HandedOffShard] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(entry.state == "synced" for entry in self.gaining.values())

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATUS_VERSION, "node_id": self.node_id, "epoch": self.epoch, "complete": self.complete,
                "gaining": [self.gaining[s].to_dict() for s in sorted(self.gaining)],
                "handing_off": [self.handing_off[s].to_dict() for s in sorted(self.handing_off)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> HandoverStatus:
        try:
            data = json.loads(text)
            if data["version"] != STATUS_VERSION:
                raise HandoverError(f"handover status version {data['version']} is not one this walrusfs reads "
                                    f"(it reads {STATUS_VERSION}): upgrade walrusfs")
            gaining = [GainedShard.from_dict(entry) for entry in data["gaining"]]
            handing_off = [HandedOffShard.from_dict(entry) for entry in data["handing_off"]]
            return cls(str(data["node_id"]), int(data["epoch"]), {g.shard: g for g in gaining},
                       {h.shard: h for h in handing_off})
        except HandoverError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise HandoverError(f"not a handover status: {error}") from error


__all__ = ["LISTING_VERSION", "STATUS_VERSION", "SYNCED_VERSION", "BlobListing", "GainedShard", "HandedOffShard",
           "HandoverError", "HandoverStatus", "ShardSynced"]
