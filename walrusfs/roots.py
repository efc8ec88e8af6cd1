"""Moved to walrusfs.protocol.roots (the protocol package, below client, filesystem and nodes); this name
stays importable for callers and for branches written against it."""

from .protocol.roots import (  # noqa: F401
    MAX_RECORD_BYTES,
    READABLE_VERSIONS,
    ROOT_VERSION,
    RootRecord,
    RootRecordError,
    fs_id_of,
    fs_id_of_key,
    is_fs_id,
)
