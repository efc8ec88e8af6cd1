"""Moved to walrusfs.protocol.lease (the protocol package, below client, filesystem and nodes); this name
stays importable for callers and for branches written against it."""

from .protocol.lease import (  # noqa: F401
    LEASE_VERSION,
    MAX_LABEL,
    MAX_LEASE_BYTES,
    MAX_TERM_MS,
    MIN_TERM_MS,
    LeaseRecord,
    LeaseRecordError,
    LeaseState,
    is_holder_id,
)
