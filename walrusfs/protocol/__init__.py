"""What clients and storage nodes agree on, below both of them (neither imports the other):

- committee: who the nodes are, their keys, shards and certificates (committee.py);
- request authorisation, format v2, and the replay guard (auth.py);
- confirmations and availability certificates (certificates.py);
- filesystems' root records (roots.py);
- every URL path of the node API, built and parsed in one place (routes.py);
- TLS without a certificate authority (tls.py), and how to reach a node over it (transport.py).

This package imports only the codec (walrusfs.redstuff) and walrusfs.keys/errors; never the client,
the filesystem or the nodes. The names below are what ``walrusfs.protocol`` exported when it was one
module, so callers keep importing them from here.
"""

from .auth import (
    AUTH_SCHEME,
    DIGEST_SIZE,
    MAX_CLOCK_SKEW,
    OLD_AUTH_SCHEME,
    SIGNATURE_SIZE,
    UNBOUND_BODY,
    AuthError,
    ReplayGuard,
    SignedRequest,
    body_digest,
    sign_request,
    verify_request,
)
from .certificates import CONFIRMATION_VERSION, Confirmation, confirmed_shards, is_certified, verify_certificate

__all__ = [
    "AUTH_SCHEME", "CONFIRMATION_VERSION", "DIGEST_SIZE", "MAX_CLOCK_SKEW", "OLD_AUTH_SCHEME", "SIGNATURE_SIZE",
    "UNBOUND_BODY", "AuthError", "Confirmation", "ReplayGuard", "SignedRequest", "body_digest", "confirmed_shards",
    "is_certified",
    "sign_request", "verify_certificate", "verify_request",
]
