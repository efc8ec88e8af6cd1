"""Moved to walrusfs.protocol.tls (the protocol package, below client, filesystem and nodes); this name
stays importable for callers and for branches written against it."""

from .protocol.tls import (  # noqa: F401
    CERTIFICATE_NAME,
    ca_context,
    certificate_text,
    certified_key,
    client_context,
    decode_certificate,
    node_certificate,
    pinned_context,
    server_context,
)
