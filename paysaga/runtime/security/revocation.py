"""Refusing revoked certificates: the CA's CRL (``crl.pem`` next to ``ca.crt``), re-read when it
changes, its signature checked against the trusted CAs.

gRPC's Python API offers no CRL check at the handshake, so the check is on every call: a revoked
certificate completes its handshake and is refused at its first call (UNAUTHENTICATED), on new
and existing connections alike, within CHECK_INTERVAL_S of the CRL being published.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cryptography import x509

from paysaga.runtime.files import FileStamp, file_stamp

log = logging.getLogger(__name__)
CRL_FILE = "crl.pem"
CHECK_INTERVAL_S = 2.0


class RevocationList:
    """The serials revoked by the CA; an unreadable or unsigned CRL keeps the last good one."""

    def __init__(self, crl_file: Path, ca_file: Path, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.crl_file = crl_file
        self.ca_file = ca_file
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._serials: frozenset[int] = frozenset()
        self._stamp: FileStamp = None
        self._next_check_at = 0.0
        self._refresh()

    def is_revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials

    def _refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_check_at:
                return
            self._next_check_at = now + self.check_interval_s
            stamp = file_stamp(self.crl_file)
            if stamp == self._stamp:
                return
            if stamp is None:
                self._stamp, self._serials = None, frozenset()  # no CRL published: nothing revoked
                return
            try:
                crl = x509.load_pem_x509_crl(self.crl_file.read_bytes())
                authorities = x509.load_pem_x509_certificates(self.ca_file.read_bytes())
            except (OSError, ValueError) as error:
                log.warning("revocation.unreadable", extra={"path": str(self.crl_file), "error": str(error)})
                return
            if not any(
                ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                for ca in authorities
            ):
                log.error("revocation.untrusted", extra={"alert": True, "path": str(self.crl_file)})
                return
            serials = frozenset(entry.serial_number for entry in crl)
            if serials != self._serials:
                log.info("revocation.loaded", extra={"revoked": len(serials)})
            self._stamp, self._serials = stamp, serials
