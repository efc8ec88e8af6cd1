"""The blob client: quorum writes with availability certificates, verified reads from any quorum."""

from .certificate import Certificate, CertificateError
from .client import BlobClient, ClientSettings, StoredBlob
from .read import ReadError, ReadReport
from .store import StoreError

__all__ = ["BlobClient", "Certificate", "CertificateError", "ClientSettings", "ReadError",
           "ReadReport", "StoreError", "StoredBlob"]
