"""Server TLS contexts from PEM bytes, without key material on a filesystem.

    context = server_context()
    load_cert_chain(context, cert_pem, key_pem)    # ssl.SSLError if unusable

Python's `ssl` loads a certificate and key only from a file, so the PEM goes to OpenSSL
through anonymous in-memory files (`memfd`, Linux): nothing is written to a filesystem,
which also works on the chart's read-only root filesystem. Where `memfd` is missing or
refused (seccomp, no /proc), the files go to a private temporary directory (0700, files
0600) that is removed as soon as they are loaded. Contexts accept TLS 1.2 and later only.

Used by both TLS edges: the events API (`events_api.tls`, from a Secret) and the admission
webhook (`admission.tls`, from its self-managed certificate). Never log or keep the key.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path


def server_context() -> ssl.SSLContext:
    """A server SSLContext that accepts TLS 1.2 and later only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_cert_chain(
    context: ssl.SSLContext, cert: bytes, key: bytes, *, in_memory: bool = True
) -> None:
    """`context.load_cert_chain` from PEM bytes, through memfd files when `in_memory` and
    available, else a private temporary directory that is removed at once."""
    if in_memory and hasattr(os, "memfd_create"):
        with contextlib.ExitStack() as stack:
            try:
                cert_path = stack.enter_context(_memfd(cert))
                key_path = stack.enter_context(_memfd(key))
            except OSError:  # memfd refused (seccomp, no /proc): use a directory below
                pass
            else:
                context.load_cert_chain(cert_path, key_path)
                return
    with tempfile.TemporaryDirectory(prefix="kubemeter-tls-") as tmp:  # mode 0700
        cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        _write_private(cert_file, cert)
        _write_private(key_file, key)
        context.load_cert_chain(str(cert_file), str(key_file))


@contextlib.contextmanager
def _memfd(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("kubemeter-tls", os.MFD_CLOEXEC)
    try:
        _write_all(fd, data)
        path = f"/proc/self/fd/{fd}"
        if not os.path.exists(path):
            raise OSError(f"{path} is not available")
        yield path
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
