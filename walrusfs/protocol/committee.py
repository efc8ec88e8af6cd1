"""The committee: which storage node holds which shards in an epoch, and who may write.

File format (TOML)::

    epoch = 1
    n_shards = 7

    [writers]
    public_keys = ["<base64 ed25519>"]

    [[nodes]]
    id = "node-0"
    url = "https://127.0.0.1:31400"
    public_key = "<base64 ed25519>"
    tls_cert = "<base64 DER>"       # optional: the node's self-signed certificate (walrusfs.protocol.tls)
    shards = [0, 7]

Every shard 0..n_shards-1 is held by exactly one node; a node may hold several. With ``tls_cert`` the
node serves TLS with that certificate, which must certify ``public_key``, and clients trust exactly it;
the url is then ``https://``. Without it (files written before TLS, or a node behind a TLS proxy) the
url says how to reach the node: ``http://``, or ``https://`` checked against the CA bundle.
"""

from __future__ import annotations

import base64
import os
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from ..errors import UserError
from ..keys import decode_public_key
from ..redstuff import EncodingGeometry, GeometryError
from .tls import certificate_text, certified_key, decode_certificate


@dataclass(frozen=True)
class NodeInfo:
    id: str
    url: str  # base URL, no trailing slash: routes are appended to it
    public_key: bytes  # raw ed25519
    shards: tuple[int, ...]
    tls_cert: bytes | None = None  # DER; pinned by clients (walrusfs.protocol.tls)


@dataclass(frozen=True)
class Committee:
    epoch: int
    n_shards: int
    nodes: tuple[NodeInfo, ...]
    writer_keys: frozenset[bytes]  # raw ed25519 public keys allowed to write and delete

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def geometry(self) -> EncodingGeometry:
        return EncodingGeometry(self.n_shards)

    @cached_property
    def _by_id(self) -> dict[str, NodeInfo]:
        return {node.id: node for node in self.nodes}

    @cached_property
    def _by_shard(self) -> dict[int, NodeInfo]:
        return {shard: node for node in self.nodes for shard in node.shards}

    def node(self, node_id: str) -> NodeInfo:
        try:
            return self._by_id[node_id]
        except KeyError:
            raise UserError(f"node {node_id!r} is not in the committee (epoch {self.epoch})") from None

    def has_node(self, node_id: str) -> bool:
        return node_id in self._by_id

    def node_for_shard(self, shard: int) -> NodeInfo:
        return self._by_shard[shard]

    def shards_of(self, node_id: str) -> tuple[int, ...]:
        return self.node(node_id).shards

    def is_writer(self, public_key: bytes) -> bool:
        return public_key in self.writer_keys

    # --- reading and writing -------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Committee:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise UserError(f"cannot read committee file {path}: {error.strerror}") from error
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, source: str = "committee") -> Committee:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{source}: not valid TOML: {error}") from error
        try:
            return cls.from_dict(data)
        except UserError as error:
            raise UserError(f"{source}: {error}") from error

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Committee:
        epoch = _field(data, "epoch", int, "the top level")
        n_shards = _field(data, "n_shards", int, "the top level")
        raw_nodes = _field(data, "nodes", list, "the top level (one [[nodes]] table per node)")
        nodes = []
        for position, entry in enumerate(raw_nodes):
            where = f"[[nodes]] entry {position + 1}"
            if not isinstance(entry, dict):
                raise UserError(f"{where} is not a table")
            node_id = _field(entry, "id", str, where)
            where = f"node {node_id!r}"
            shards = _field(entry, "shards", list, where)
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in shards):
                raise UserError(f"{where}: shards must be a list of integers")
            nodes.append(NodeInfo(
                id=node_id,
                url=_field(entry, "url", str, where).rstrip("/"),
                public_key=_public_key(_field(entry, "public_key", str, where), where),
                shards=tuple(shards),
                tls_cert=_certificate(_field(entry, "tls_cert", str, where), where) if "tls_cert" in entry else None,
            ))
        writers = data.get("writers", {})
        if not isinstance(writers, dict):
            raise UserError("[writers] must be a table with public_keys = [...]")
        writer_texts = writers.get("public_keys", [])
        if not isinstance(writer_texts, list) or not all(isinstance(k, str) for k in writer_texts):
            raise UserError("[writers] public_keys must be a list of base64 ed25519 public keys")
        keys = frozenset(_public_key(text, "[writers] public_keys") for text in writer_texts)
        return cls(epoch, n_shards, tuple(nodes), keys)

    def to_dict(self) -> dict[str, Any]:
        """The committee as the TOML file lays it out (``from_dict`` reads it back)."""
        def b64(raw: bytes) -> str:
            return base64.b64encode(raw).decode()

        nodes = [{"id": node.id, "url": node.url, "public_key": b64(node.public_key),
                  **({"tls_cert": certificate_text(node.tls_cert)} if node.tls_cert else {}),
                  "shards": list(node.shards)} for node in self.nodes]
        return {"epoch": self.epoch, "n_shards": self.n_shards,
                "writers": {"public_keys": [b64(k) for k in sorted(self.writer_keys)]},
                "nodes": nodes}

    def dumps(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def write(self, path: Path | str) -> None:
        """Write atomically: a reader sees the old file or the new one."""
        path = Path(path)
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(self.dumps())
        os.replace(temp, path)


def _validate(committee: Committee) -> None:
    if committee.epoch < 0:
        raise UserError(f"epoch must be >= 0, got {committee.epoch}")
    try:
        EncodingGeometry(committee.n_shards)
    except GeometryError as error:
        raise UserError(f"n_shards: {error}") from error
    if not committee.nodes:
        raise UserError("the committee has no nodes: add one [[nodes]] table per storage node")
    seen_ids: set[str] = set()
    holder: dict[int, str] = {}
    for node in committee.nodes:
        if not node.id:
            raise UserError("a node has an empty id")
        if node.id in seen_ids:
            raise UserError(f"node id {node.id!r} appears twice: node ids must be unique")
        seen_ids.add(node.id)
        parts = urlsplit(node.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise UserError(f"node {node.id!r}: url {node.url!r} must look like http://HOST:PORT")
        if node.tls_cert is not None:
            if certified_key(node.tls_cert) != node.public_key:
                raise UserError(f"node {node.id!r}: tls_cert certifies another key than its public_key "
                                "(print the right one with `walrusfs node cert KEYFILE`)")
            if parts.scheme != "https":
                raise UserError(f"node {node.id!r}: it has a tls_cert, so its url must be https://, not {node.url!r}")
        if not node.shards:
            raise UserError(f"node {node.id!r} holds no shards")
        for shard in node.shards:
            if not 0 <= shard < committee.n_shards:
                raise UserError(
                    f"node {node.id!r}: shard {shard} outside [0, {committee.n_shards}) (n_shards)"
                )
            if shard in holder:
                raise UserError(f"shard {shard} is held by both {holder[shard]!r} and {node.id!r}")
            holder[shard] = node.id
    missing = sorted(set(range(committee.n_shards)) - holder.keys())
    if missing:
        listed = ", ".join(map(str, missing))
        raise UserError(f"shards {listed} are held by no node: every shard needs one holder")


def _field(table: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in table:
        raise UserError(f"{where}: missing {name!r}")
    value = table[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def _public_key(text: str, where: str) -> bytes:
    try:
        return decode_public_key(text)
    except ValueError as error:
        raise UserError(f"{where}: bad public key: {error}") from error


def _certificate(text: str, where: str) -> bytes:
    try:
        return decode_certificate(text)
    except ValueError as error:
        raise UserError(f"{where}: bad tls_cert: {error}") from error


def round_robin_shards(n_nodes: int, n_shards: int) -> list[tuple[int, ...]]:
    """Shard s goes to node s mod n_nodes."""
    return [tuple(range(i, n_shards, n_nodes)) for i in range(n_nodes)]


__all__ = ["Committee", "NodeInfo", "round_robin_shards"]
