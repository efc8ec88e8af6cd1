"""Request authorisation between writers and storage nodes: signing (v2) and the replay guard.

Writes (PUT, DELETE) carry a signed ``Authorization`` header (format v2, docs/node-api.md)::

    WalrusFS-Ed25519-2 key="..", node="<node id>", ts="..", nonce="..", body="<b64 blake3 | ->", sig=".."

an ed25519 signature by a committee writer over the method, the request target, the node the
request is for (its id and its public key as the committee lists them), the timestamp, the nonce
and a blake3 digest of the body. Binding the target node makes a request captured on its way to
one node useless at every other; binding the body makes it useless with any other body. ``body="-"``
leaves the body unbound, which a node accepts only for bodies that certify themselves and are large
(slivers, checked against the blob's metadata): hashing MiBs twice buys nothing there.

Nodes accept a request within MAX_CLOCK_SKEW seconds of their clock and each nonce once: in memory
(ReplayGuard) for writes that are harmless to repeat, durably (nodes/nonces.py) for those that are
not. The v1 scheme (``WalrusFS-Ed25519``, which named no node and no body) is refused.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..keys import KEY_SIZE, public_bytes
from .committee import Committee, NodeInfo

AUTH_SCHEME = "WalrusFS-Ed25519-2"
OLD_AUTH_SCHEME = "WalrusFS-Ed25519"  # v1: refused, with a message saying why
MAX_CLOCK_SKEW = 300  # seconds either way
SIGNATURE_SIZE = 64
DIGEST_SIZE = 32
UNBOUND_BODY = "-"
_REQUEST_DOMAIN = b"walrusfs-request-v2\0"
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")  # what a journal line can hold verbatim


class AuthError(Exception):
    """A request whose authorisation is missing or wrong. ``forbidden`` when the signature is good
    but the key may not write (403 rather than 401)."""

    def __init__(self, message: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def body_digest(body: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(body).digest()


def _field(value: str | bytes) -> bytes:
    """A length-prefixed field: no choice of one field's text can shift the boundary to the next."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<I", len(raw)) + raw


def _request_message(method: str, target: str, node_id: str, node_key: bytes, timestamp: int, nonce: str,
                     digest: bytes | None) -> bytes:
    return _REQUEST_DOMAIN + b"".join(_field(part) for part in (
        method.upper(), target, node_id, node_key, str(timestamp), nonce,
        UNBOUND_BODY if digest is None else digest))


def sign_request(key: Ed25519PrivateKey, method: str, target: str, node: NodeInfo,
                 body: bytes | bytearray | memoryview | None = b"", *, now: float | None = None,
                 nonce: str | None = None) -> str:
    """The Authorization header value for a request to ``node`` (client side). ``target`` is the
    request target exactly as sent (percent-encoding and query string included); ``body`` the exact
    body bytes (b"" for none), or None to leave a self-certifying body unbound."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_urlsafe(16)
    digest = None if body is None else body_digest(body)
    signature = key.sign(_request_message(method, target, node.id, node.public_key, timestamp, nonce, digest))
    body_text = UNBOUND_BODY if digest is None else base64.b64encode(digest).decode()
    return (f'{AUTH_SCHEME} key="{base64.b64encode(public_bytes(key)).decode()}", node="{node.id}", '
            f'ts="{timestamp}", nonce="{nonce}", body="{body_text}", sig="{base64.b64encode(signature).decode()}"')


@dataclass(frozen=True)
class SignedRequest:
    """What a verified Authorization header establishes."""

    writer: bytes  # the writer's public key
    timestamp: int
    nonce: str
    digest: bytes | None  # blake3 of the body the writer signed; None if the body is not bound

    @property
    def expiry(self) -> int:
        """After this (node clock, unix seconds) the request is refused as stale anyway, so its nonce
        need not be remembered."""
        return self.timestamp + MAX_CLOCK_SKEW + 1

    def check_body(self, body: bytes | bytearray | memoryview) -> None:
        """AuthError unless ``body`` is the one signed (a no-op for an unbound body)."""
        if self.digest is not None and body_digest(body) != self.digest:
            raise AuthError("the body is not the one the Authorization signature covers "
                            "(altered in transit, or a signature made for another request)")


class ReplayGuard:
    """Remembers, in memory, nonces seen within the clock-skew window so that a captured request
    cannot be replayed while the node runs (nodes/nonces.py keeps those that must survive a restart)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity

    def check_and_remember(self, nonce: str, now: float, expiry: float | None = None) -> bool:
        """False if ``nonce`` was already used."""
        while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) >= self._capacity):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + 2 * MAX_CLOCK_SKEW if expiry is None else max(expiry, now)
        return True


def _parse_header(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme == OLD_AUTH_SCHEME:
        raise AuthError(f"the {OLD_AUTH_SCHEME} (v1) signature names neither the node nor the body, so it "
                        f"could be replayed elsewhere; this node accepts only {AUTH_SCHEME}: upgrade walrusfs "
                        "on the client")
    if scheme != AUTH_SCHEME:
        raise AuthError(f"Authorization scheme must be {AUTH_SCHEME}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise AuthError(f"malformed Authorization parameter {part.strip()[:40]!r}")
        fields[name.strip()] = value.strip().strip('"')
    missing = {"key", "node", "ts", "nonce", "body", "sig"} - fields.keys()
    if missing:
        raise AuthError(f"Authorization lacks {', '.join(sorted(missing))}")
    return fields


def verify_request(header: str | None, method: str, target: str, committee: Committee, node_id: str, *,
                   now: float | None = None, replay: ReplayGuard | None = None,
                   body_bound: bool = True) -> SignedRequest:
    """Check a write's Authorization header on node ``node_id`` (node side), before the body is read.

    ``body_bound``: the route's body must be signed (False: it may also be left unbound). The
    caller checks the body itself with ``SignedRequest.check_body`` once it has it. Raises
    AuthError saying what is wrong.
    """
    return verify_signed(header, method, target, node_id, committee.node(node_id).public_key,
                         committee.writer_keys, "one of the committee's writers", now=now, replay=replay,
                         body_bound=body_bound)


def verify_signed(header: str | None, method: str, target: str, node_id: str, node_key: bytes,
                  allowed: Collection[bytes], role: str, *, now: float | None = None,
                  replay: ReplayGuard | None = None, body_bound: bool = True) -> SignedRequest:
    """``verify_request`` for any set of keys: a request to node ``node_id`` (whose public key is
    ``node_key``) signed by one of ``allowed`` (``role`` names them in the refusal, e.g. "one of this
    node's proposers"). The format and every check are the writers' (docs/node-api.md)."""
    if not header:
        raise AuthError(f"writes need an Authorization: {AUTH_SCHEME} header signed by {role}")
    fields = _parse_header(header)
    try:
        key = base64.b64decode(fields["key"], validate=True)
        signature = base64.b64decode(fields["sig"], validate=True)
        timestamp = int(fields["ts"])
        digest = None if fields["body"] == UNBOUND_BODY else base64.b64decode(fields["body"], validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("Authorization key, sig, ts or body is not well formed") from None
    if len(key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE or (digest is not None and len(digest) != DIGEST_SIZE):
        raise AuthError("Authorization key, sig or body has the wrong length")
    if not _NONCE.fullmatch(fields["nonce"]):
        raise AuthError("Authorization nonce must be 8 to 64 characters of base64url")
    if fields["node"] != node_id:
        raise AuthError(f"this request was signed for node {fields['node'][:64]!r}, and this is {node_id!r}: "
                        "a request is valid only at the node it was signed for")
    if digest is None and body_bound:
        raise AuthError(f"this route needs the body's blake3 digest in the Authorization body field, "
                        f"not {UNBOUND_BODY!r}")
    now = time.time() if now is None else now
    if abs(now - timestamp) > MAX_CLOCK_SKEW:
        raise AuthError(
            f"Authorization timestamp is {int(now - timestamp)} s away from the node's clock "
            f"(limit {MAX_CLOCK_SKEW} s): check the clocks"
        )
    message = _request_message(method, target, node_id, node_key, timestamp, fields["nonce"], digest)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except InvalidSignature:
        raise AuthError("Authorization signature does not verify for this method, path, node and body digest "
                        "(or the node's key is not the one in the signer's committee file)") from None
    if key not in allowed:
        raise AuthError(f"this key is not {role}", forbidden=True)
    signed = SignedRequest(key, timestamp, fields["nonce"], digest)
    if replay is not None and not replay.check_and_remember(signed.nonce, now, signed.expiry):
        raise AuthError("Authorization nonce was already used (replayed request)")
    return signed
