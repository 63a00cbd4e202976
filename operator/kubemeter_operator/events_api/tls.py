"""HTTPS for the events API, from a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).

    context = server_ssl_context(kubernetes_secret_reader(core_v1), "kubemeter/events-tls")
    runner = await serve(app, ssl_context=context)

The certificate chain and key are read once, when the API starts (a rotated Secret, e.g.
by cert-manager, takes effect on the next start). Python's `ssl` loads a key only from a
file, so the PEM is handed to OpenSSL through an anonymous in-memory file (`memfd`, Linux):
nothing is written to a filesystem, which also works on the chart's read-only root
filesystem. Where `memfd` is missing, the files go to a private temporary directory (0700,
files 0600) that is removed as soon as they are loaded. The context accepts TLS 1.2 and
later only.

Never log, keep or return the key material, never leave it on disk, and never fall back to
plain HTTP: a Secret that is missing or unusable is an error that stops the start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kubemeter_operator.errors import InputError
from kubemeter_operator.events_api.k8s_tokens import SecretReader

CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name); InputError naming the reference otherwise."""
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise InputError("events_tls_secret", f"{ref!r} is not namespace/name")
    return namespace, name


def _pem(data: dict[str, str], key: str, where: str) -> bytes:
    raw = data.get(key)
    if not raw:
        raise InputError(f"secret {where} data.{key}", "missing or empty")
    try:
        pem = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"secret {where} data.{key}", "not base64") from exc
    if b"-----BEGIN " not in pem:
        raise InputError(f"secret {where} data.{key}", "not PEM")
    return pem


def server_ssl_context(read_secret: SecretReader, ref: str) -> ssl.SSLContext:
    """A server SSLContext from the TLS Secret `ref` (`namespace/name`).

    Raises InputError naming the Secret and key when it is missing, incomplete, not PEM, or
    the key does not match the certificate; TransientError (from `read_secret`) when the API
    server cannot be asked. Blocking: call it off the event loop."""
    namespace, name = parse_secret_ref(ref)
    where = f"{namespace}/{name}"
    data = read_secret(namespace, name)
    if data is None:
        raise InputError(f"secret {where}", "not found (events API TLS)")
    cert, key = _pem(data, CERT_KEY, where), _pem(data, KEY_KEY, where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        load_cert_chain(context, cert, key)
    except ssl.SSLError as exc:
        raise InputError(
            f"secret {where} data.{CERT_KEY}/data.{KEY_KEY}",
            f"not a usable certificate chain and matching unencrypted key ({exc.reason})",
        ) from exc
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
        cert_file, key_file = Path(tmp) / CERT_KEY, Path(tmp) / KEY_KEY
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
