"""The webhook's server SSLContext, loaded from a `CertBundle` and reloaded in place.

    tls = ServingTls(bundle)       # tls.context goes to the aiohttp site
    tls.load(renewed)              # new handshakes use the renewed certificate

The PEM pair reaches OpenSSL without touching a filesystem (`kubemeter_operator.tls`).
TLS 1.2 and later only. Never keep key material on disk, log it, or serve without TLS.
"""

from __future__ import annotations

from kubemeter_operator.admission.certs import CertBundle
from kubemeter_operator.tls import load_cert_chain, server_context


class ServingTls:
    def __init__(self, bundle: CertBundle) -> None:
        self.context = server_context()
        self.bundle = bundle
        self.load(bundle)

    def load(self, bundle: CertBundle) -> None:
        """Serve `bundle`'s certificate from the next handshake on (ssl.SSLError if unusable)."""
        load_cert_chain(self.context, bundle.cert_pem, bundle.key_pem)
        self.bundle = bundle
