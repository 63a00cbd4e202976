"""HTTPS for the events API, from a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).

    context = server_ssl_context(kubernetes_secret_reader(core_v1), "kubemeter/events-tls")
    runner = await serve(app, ssl_context=context)

The certificate chain and key are read once, when the API starts (a rotated Secret, e.g.
by cert-manager, takes effect on the next start). Python's `ssl` loads a key only from a
file; the PEM reaches OpenSSL without touching a filesystem (`kubemeter_operator.tls`).
The context accepts TLS 1.2 and later only.

Never log, keep or return the key material, never leave it on disk, and never fall back to
plain HTTP: a Secret that is missing or unusable is an error that stops the start.
"""

from __future__ import annotations

import base64
import binascii
import ssl

from kubemeter_operator.errors import InputError
from kubemeter_operator.events_api.k8s_tokens import SecretReader
from kubemeter_operator.tls import load_cert_chain, server_context

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
    context = server_context()
    try:
        load_cert_chain(context, cert, key)
    except ssl.SSLError as exc:
        raise InputError(
            f"secret {where} data.{CERT_KEY}/data.{KEY_KEY}",
            f"not a usable certificate chain and matching unencrypted key ({exc.reason})",
        ) from exc
    return context
