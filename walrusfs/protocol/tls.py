"""TLS between clients and storage nodes without a certificate authority.

Each node's certificate is a self-signed X.509 certificate for its ed25519 committee key, derived
from the key alone (fixed names, serial and validity, and ed25519 signatures are deterministic: the
same key always gives the same bytes). The committee file carries it (``tls_cert``, base64 DER), and
checks on load that it certifies the key the committee lists for that node. A client trusts, for each
node, exactly that one certificate and nothing else: no CA bundle, no hostname check (the committee,
not DNS, says who the node is). Only the holder of the node's private key can complete a handshake
with it, and one node's certificate is no good for impersonating another.

A node whose committee entry has no ``tls_cert`` is spoken to as its URL says: plain ``http://``, or
``https://`` verified against the system's CA bundle (a node behind a TLS-terminating proxy).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import os
import ssl
import tempfile

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from ..keys import public_bytes, public_key_text

# The one name in every node's certificate, for verifiers that insist on checking a name (Prometheus: ca_file
# = the node's certificate, server_name = this). Which node it is, the pinned certificate itself says.
CERTIFICATE_NAME = "walrusfs-node.invalid"
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)  # the committee, not a date, revokes


def node_certificate(key: Ed25519PrivateKey) -> bytes:
    """The node's certificate (DER) for its key: the same bytes every time for the same key."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "walrusfs node"),
                      x509.NameAttribute(NameOID.COMMON_NAME, public_key_text(key))])
    serial = int.from_bytes(public_bytes(key)[:16], "big") >> 1 or 1  # positive, below 2^127
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(serial).not_valid_before(_NOT_BEFORE).not_valid_after(_NOT_AFTER)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(CERTIFICATE_NAME)]), critical=False)
                   .sign(key, None))
    return certificate.public_bytes(Encoding.DER)


def certificate_text(der: bytes) -> str:
    return base64.b64encode(der).decode()


def decode_certificate(text: str) -> bytes:
    """The DER bytes of a ``tls_cert`` value (an ed25519 certificate); ValueError saying why not."""
    try:
        der = base64.b64decode(text, validate=True)
        certificate = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not a base64 DER X.509 certificate: {error}") from None
    if not isinstance(certificate.public_key(), Ed25519PublicKey):
        raise ValueError("the certificate's key is not an ed25519 key")
    return der


def certified_key(der: bytes) -> bytes:
    """The raw ed25519 public key a certificate certifies."""
    key = x509.load_der_x509_certificate(der).public_key()
    assert isinstance(key, Ed25519PublicKey)
    return public_bytes(key)


@functools.cache
def ca_context() -> ssl.SSLContext:
    """One verifying context per process on httpx's CA bundle, for https URLs without a pinned
    certificate. Left to itself httpx builds one per client, loading every CA certificate: ~17 ms of
    CPU per blob command, even over plain HTTP."""
    return ssl.create_default_context(cafile=certifi.where())


@functools.cache
def pinned_context(der: bytes) -> ssl.SSLContext:
    """A client context that accepts exactly the peer holding the key of this certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # the pinned certificate says who the node is, not its address
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=der)
    return context


def client_context(pinned: bytes | None) -> ssl.SSLContext:
    """Exactly the pinned certificate if there is one, else the CA bundle."""
    return ca_context() if pinned is None else pinned_context(pinned)


def server_context(key: Ed25519PrivateKey, der: bytes) -> ssl.SSLContext:
    """The node's server context: its certificate (as the committee lists it) and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    pem_key = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    pem_cert = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    # ssl loads keys only from files: a private one, gone as soon as it is read.
    with tempfile.TemporaryDirectory(prefix="walrusfs-tls-") as directory:
        path = os.path.join(directory, "node.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem_key + pem_cert)
        context.load_cert_chain(path)
    return context
