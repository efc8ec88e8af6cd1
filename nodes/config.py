"""A storage node's configuration file (TOML), checked before the node starts.

    node_id = "node-0"
    listen = "127.0.0.1:31400"
    data_dir = "data"                 # relative paths are relative to this file
    signing_key = "node.key"
    committee = "../committee.toml"
    max_blob_size = 1073741824        # optional, bytes; bounds the sliver sizes accepted
    log_level = "info"                # optional
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.committee import Committee
from walrusfs.errors import UserError
from walrusfs.keys import load_key, public_bytes
from walrusfs.redstuff import MAX_BLOB_LENGTH

DEFAULT_MAX_BLOB_SIZE = 1 << 30
_KNOWN = {"node_id", "listen", "data_dir", "signing_key", "committee", "max_blob_size", "log_level"}


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
                   relative("signing_key"), relative("committee"), max_blob, log_level)

    def load_identity(self) -> tuple[Committee, Ed25519PrivateKey]:
        """The committee and this node's key, checked against each other."""
        committee = Committee.load(self.committee_path)
        if not committee.has_node(self.node_id):
            raise UserError(f"node id {self.node_id!r} is not in committee {self.committee_path}")
        key = load_key(self.signing_key_path)
        if public_bytes(key) != committee.node(self.node_id).public_key:
            raise UserError(
                f"signing key {self.signing_key_path} does not match the public key the committee "
                f"lists for {self.node_id!r}"
            )
        return committee, key
