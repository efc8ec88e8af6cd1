"""Moved to walrusfs.protocol.committee (the protocol package, below client, filesystem and nodes); this name
stays importable for callers and for branches written against it."""

from .protocol.committee import (  # noqa: F401
    Committee,
    NodeInfo,
    round_robin_shards,
)
