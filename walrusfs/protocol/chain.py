"""The committee chain: every committee after the first is anchored in the one before it.

There is no blockchain to say which committee is current. Instead committee e + 1 is valid when
nodes holding at least n - f shards of committee e have signed it (a CommitteeLink). Whoever
trusts any committee (the file a user got at mkfs time, years ago) walks the links forward and
checks each step, so a forged successor needs n - f shards' worth of keys of the epoch before it:
more than the f faulty shards the whole design tolerates.

What a node signs (link format v1)::

    "walrusfs-committee-link\\0" | u8 version | u64 epoch of the successor
    | 32 digest of committee e | 32 digest of committee e + 1

The digest of a committee is blake3 over its canonical form: JSON of ``Committee.to_dict()`` with
sorted keys, nodes sorted by id and their shards sorted, no whitespace (``committee_digest``). It
covers everything a client acts on: epoch, shard count, nodes (ids, URLs, keys, TLS certificates,
shards) and the writers' keys.

A link travels and is stored as JSON (docs/epochs.md)::

    {"version": 1, "previous_digest": "<hex>", "committee": {<Committee.to_dict()>},
     "signatures": [{"node_id": "...", "signature": "<base64>"}, ...]}

A chain file (``CommitteeChain.to_json``) is its anchor committee and the links after it::

    {"version": 1, "anchor": {<Committee.to_dict()>}, "links": [<link>, ...]}

The number of shards never changes along a chain: a blob's encoding depends on it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UserError
from .committee import Committee

LINK_VERSION = 1
CHAIN_VERSION = 1
_LINK_DOMAIN = b"walrusfs-committee-link\0"


class ChainError(UserError):
    """A committee link or chain that does not verify (forged, too few signatures, a gap)."""


def committee_digest(committee: Committee) -> bytes:
    """blake3 of the committee's canonical JSON: the same committee gives the same digest anywhere."""
    data = committee.to_dict()
    data["nodes"] = sorted(({**node, "shards": sorted(node["shards"])} for node in data["nodes"]),
                           key=lambda node: node["id"])
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return blake3.blake3(canonical.encode()).digest()


def link_signed_bytes(previous_digest: bytes, successor: Committee) -> bytes:
    """What each node of the previous committee signs to vouch for ``successor``."""
    return b"".join([_LINK_DOMAIN, struct.pack("<BQ", LINK_VERSION, successor.epoch), previous_digest,
                     committee_digest(successor)])


def sign_link(key: Ed25519PrivateKey, previous: Committee, successor: Committee) -> bytes:
    """A node's signature for ``successor`` as the next committee after ``previous``."""
    return key.sign(link_signed_bytes(committee_digest(previous), successor))


@dataclass(frozen=True)
class CommitteeLink:
    """Committee ``committee.epoch`` and the signatures of nodes of the committee before it."""

    previous_digest: bytes
    committee: Committee
    signatures: dict[str, bytes] = field(default_factory=dict)  # node id (of the previous committee) -> sig

    @property
    def epoch(self) -> int:
        return self.committee.epoch

    def with_signature(self, node_id: str, signature: bytes) -> CommitteeLink:
        return CommitteeLink(self.previous_digest, self.committee, {**self.signatures, node_id: signature})

    def signed_shards(self, previous: Committee) -> set[int]:
        """Shards of ``previous`` whose holders' signatures on this link verify."""
        if self.previous_digest != committee_digest(previous):
            return set()
        message = link_signed_bytes(self.previous_digest, self.committee)
        covered: set[int] = set()
        for node_id, signature in self.signatures.items():
            if not previous.has_node(node_id):
                continue
            node = previous.node(node_id)
            try:
                Ed25519PublicKey.from_public_bytes(node.public_key).verify(signature, message)
            except (InvalidSignature, ValueError):
                continue
            covered |= set(node.shards)
        return covered

    def verify(self, previous: Committee) -> Committee:
        """The successor committee, if this link validly follows ``previous``; else ChainError."""
        successor = self.committee
        if successor.epoch != previous.epoch + 1:
            raise ChainError(f"committee link for epoch {successor.epoch} does not follow epoch {previous.epoch}: "
                             f"links must be walked one epoch at a time")
        if successor.n_shards != previous.n_shards:
            raise ChainError(f"committee of epoch {successor.epoch} has {successor.n_shards} shards, epoch "
                             f"{previous.epoch} has {previous.n_shards}: the shard count never changes")
        if self.previous_digest != committee_digest(previous):
            raise ChainError(f"committee of epoch {successor.epoch} was signed as the successor of another "
                             f"committee than the epoch {previous.epoch} committee trusted here (a fork or a "
                             f"forgery): refusing it")
        covered = self.signed_shards(previous)
        quorum = previous.geometry.quorum
        if len(covered) < quorum:
            raise ChainError(f"committee of epoch {successor.epoch} is signed by nodes holding {len(covered)} "
                             f"shards of epoch {previous.epoch}; it needs {quorum} of {previous.n_shards} "
                             f"(n - f): refusing it as unsigned or forged")
        return successor

    # --- JSON ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LINK_VERSION,
            "previous_digest": self.previous_digest.hex(),
            "committee": self.committee.to_dict(),
            "signatures": [{"node_id": node_id, "signature": base64.b64encode(sig).decode()}
                           for node_id, sig in sorted(self.signatures.items())],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> CommitteeLink:
        try:
            if data["version"] != LINK_VERSION:
                raise ChainError(f"committee link version {data['version']} is not one this walrusfs reads "
                                 f"(it reads {LINK_VERSION}): upgrade walrusfs")
            digest = bytes.fromhex(data["previous_digest"])
            if len(digest) != 32:
                raise ValueError("previous_digest is not 32 bytes")
            signatures = {str(entry["node_id"]): base64.b64decode(entry["signature"], validate=True)
                          for entry in data["signatures"]}
            committee = Committee.from_dict(data["committee"])
        except ChainError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error, UserError) as error:
            raise ChainError(f"not a committee link: {error}") from error
        return cls(digest, committee, signatures)

    @classmethod
    def from_json(cls, text: str | bytes) -> CommitteeLink:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ChainError(f"not a committee link: {error}") from error
        return cls.from_dict(data)


def propose(previous: Committee, successor: Committee) -> CommitteeLink:
    """An unsigned link: what a proposer sends the nodes of ``previous`` to sign."""
    return CommitteeLink(committee_digest(previous), successor)


class CommitteeChain:
    """Committees from a trusted anchor to the newest one verified, each checked against the one before.

    ``committee_at(e)`` answers which committee certified something in epoch e (certificates name
    their epoch); epochs before the anchor are unknown here, since nothing anchors them.
    """

    def __init__(self, anchor: Committee, links: Iterable[CommitteeLink] = ()) -> None:
        self.anchor = anchor
        self._committees: list[Committee] = [anchor]
        self._links: list[CommitteeLink] = []
        for link in links:
            self.extend(link)

    @property
    def current(self) -> Committee:
        return self._committees[-1]

    @property
    def links(self) -> tuple[CommitteeLink, ...]:
        return tuple(self._links)

    def committees(self) -> tuple[Committee, ...]:
        return tuple(self._committees)

    def copy(self) -> CommitteeChain:
        """The same chain, to be extended on its own (nothing is verified again)."""
        twin = CommitteeChain(self.anchor)
        twin._committees = list(self._committees)
        twin._links = list(self._links)
        return twin

    def extend(self, link: CommitteeLink) -> Committee:
        """Verify ``link`` against the current committee and make its committee current."""
        successor = link.verify(self.current)
        self._committees.append(successor)
        self._links.append(link)
        return successor

    def extend_from(self, links: Iterable[CommitteeLink]) -> list[Committee]:
        """Extend with the links after the current epoch (older ones are skipped, a gap is an error)."""
        added = []
        for link in sorted(links, key=lambda link: link.epoch):
            if link.epoch <= self.current.epoch:
                continue
            added.append(self.extend(link))
        return added

    def committee_at(self, epoch: int) -> Committee:
        first = self.anchor.epoch
        if not first <= epoch <= self.current.epoch:
            raise ChainError(f"no committee of epoch {epoch} is known here (this chain runs from epoch {first} "
                             f"to {self.current.epoch}): refresh the committee chain from the nodes")
        return self._committees[epoch - first]

    def links_after(self, epoch: int) -> list[CommitteeLink]:
        """The links that take a holder of committee ``epoch`` to the current one (what nodes serve)."""
        return [link for link in self._links if link.epoch > epoch]

    # --- JSON ----------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"version": CHAIN_VERSION, "anchor": self.anchor.to_dict(),
                           "links": [link.to_dict() for link in self._links]}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "committee chain") -> CommitteeChain:
        """Load and re-verify every link: a chain file is never trusted more than its anchor."""
        try:
            data = json.loads(text)
            if data["version"] != CHAIN_VERSION:
                raise ChainError(f"{source}: chain version {data['version']} is not one this walrusfs reads "
                                 f"(it reads {CHAIN_VERSION}): upgrade walrusfs")
            anchor = Committee.from_dict(data["anchor"])
            links = [CommitteeLink.from_dict(entry) for entry in data["links"]]
        except ChainError:
            raise
        except (KeyError, TypeError, ValueError, UserError) as error:
            raise ChainError(f"{source}: not a committee chain: {error}") from error
        return cls(anchor, links)


__all__ = ["CHAIN_VERSION", "LINK_VERSION", "ChainError", "CommitteeChain", "CommitteeLink", "committee_digest",
           "link_signed_bytes", "propose", "sign_link"]
