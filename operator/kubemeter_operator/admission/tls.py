"""The webhook's server SSLContext, loaded from a `CertBundle` and reloaded in place.

    tls = ServingTls(bundle)       # tls.context goes to the aiohttp site
    tls.load(renewed)              # new handshakes use the renewed certificate

Python's `ssl` loads a certificate and key only from a file, so the PEM pair goes to
OpenSSL through one anonymous in-memory file (`memfd`, Linux): nothing is written to a
filesystem, which works on the chart's read-only root filesystem. Where `memfd` is missing,
a private temporary directory (0700, file 0600) is used and removed at once. TLS 1.2 and
later only.

(`events_api.tls` does the same for the events API from two files; the layers keep the two
edges from importing each other.)

Never keep key material on disk, log it, or serve without TLS.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kubemeter_operator.admission.certs import CertBundle


class ServingTls:
    def __init__(self, bundle: CertBundle) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.bundle = bundle
        self.load(bundle)

    def load(self, bundle: CertBundle) -> None:
        """Serve `bundle`'s certificate from the next handshake on (ssl.SSLError if unusable)."""
        with _pem_file(bundle.cert_pem + b"\n" + bundle.key_pem) as path:
            self.context.load_cert_chain(path)
        self.bundle = bundle


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("kubemeter-admission-tls", os.MFD_CLOEXEC)
        except OSError:  # refused (seccomp): use a private directory below
            pass
        else:
            try:
                _write_all(fd, data)
                path = f"/proc/self/fd/{fd}"
                if os.path.exists(path):
                    yield path
                    return
            finally:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="kubemeter-admission-") as tmp:  # mode 0700
        path = str(Path(tmp) / "tls.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
