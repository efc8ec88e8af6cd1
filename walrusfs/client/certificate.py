"""Availability certificates moved to walrusfs.protocol.certificates: nodes keep and check them as much
as clients make them, so they belong below both. These names stay importable from here."""

from ..protocol.certificates import CERTIFICATE_VERSION, Certificate, CertificateError  # noqa: F401
