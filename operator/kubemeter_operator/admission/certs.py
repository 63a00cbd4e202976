"""The webhook's self-managed certificates (with `cryptography`). Pure: no I/O, the clock is
an argument.

    bundle = generate(["km-admission.kubemeter.svc", "127.0.0.1"], now)
    reason = renewal_reason(bundle, hosts, now)        # None while it is good
    bundle = renew(bundle, hosts, now) if reason else bundle
    data = to_secret_data(bundle); bundle = from_secret_data(data)

A private CA (ECDSA P-256, `CA_VALIDITY`) signs a serving certificate (`LEAF_VALIDITY`)
whose subjectAltName lists every host: DNS names, and IP addresses as IP SANs (the API server,
like every Go client, ignores the common name). The API server trusts the CA through the
webhook configuration's caBundle, so a renewed serving certificate under the same CA needs
no caBundle change. A CA within `RENEW_BEFORE` of its end is replaced by a new one; the old
CA stays in the bundle while it is valid, so replicas still serving a certificate of the old
CA are trusted until they reload.

Kept in a Secret: `tls.crt`/`tls.key` (the serving pair), `ca.crt` (the bundle, newest CA
first) and `ca.key`. One the operator creates is a `kubernetes.io/tls` Secret; the chart
creates it empty and `Opaque` (so Helm owns it), and the operator keeps that type.

Never log, return or keep key material anywhere but the bundle and the Secret, and never
issue a certificate without a subjectAltName.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubemeter_operator.errors import InputError

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
"""A certificate with less than this left is renewed."""
BACKDATE = timedelta(minutes=5)
"""notBefore lies this far before now: clocks of the API server and the operator differ."""

CA_CERT_KEY, CA_KEY_KEY = "ca.crt", "ca.key"
TLS_CERT_KEY, TLS_KEY_KEY = "tls.crt", "tls.key"
SECRET_TYPE = "kubernetes.io/tls"

Host = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class CertBundle:
    """PEM bytes of the CA(s) and the serving pair."""

    ca_pem: bytes
    """The CA bundle (newest first): what the caBundle of the webhook holds."""
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def ca(self) -> x509.Certificate:
        """The newest CA (it signs renewals)."""
        return x509.load_pem_x509_certificates(self.ca_pem)[0]

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def parse_hosts(hosts: Iterable[str]) -> list[Host]:
    """DNS names and IP addresses as subjectAltName entries; InputError naming a bad one."""
    out: list[Host] = []
    for i, raw in enumerate(hosts):
        host = raw.strip()
        if not host:
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = host.split(".")
        if len(host) > 253 or not all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        ):
            raise InputError(f"admission_hosts[{i}]", f"{host!r} is not a DNS name or IP")
        out.append(x509.DNSName(host.lower()))
    if not out:
        raise InputError("admission_hosts", "at least one DNS name or IP address is needed")
    return out


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature, plus keyCertSign and cRLSign for a CA (ECDSA: no keyEncipherment)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubemeter"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kubemeter-admission-ca-{now:%Y%m%d%H%M%S}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[Host], now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    first = hosts[0].value
    common_name = str(first)[:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def generate(hosts: Iterable[str], now: datetime) -> CertBundle:
    """A new CA and a serving certificate for `hosts`."""
    sans = parse_hosts(hosts)
    ca, ca_key = _new_ca(now)
    cert, key = _issue(ca, ca_key, sans, now)
    return CertBundle(_pem(ca), _pem_key(ca_key), _pem(cert), _pem_key(key))


def _ca_key(bundle: CertBundle) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(bundle.ca_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    return key


def _covers(cert: x509.Certificate, hosts: list[Host]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(host in san for host in hosts)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _pair_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return bool(cert.public_key() == key.public_key())


def renewal_reason(
    bundle: CertBundle, hosts: Iterable[str], now: datetime, *, before: timedelta = RENEW_BEFORE
) -> str | None:
    """Why the bundle must be renewed (None: it is good for `before` more)."""
    sans = parse_hosts(hosts)
    try:
        ca, cert = bundle.ca, bundle.cert
        if not _pair_matches(ca, bundle.ca_key_pem):
            return "the CA key does not match the CA"
        if not _pair_matches(cert, bundle.key_pem):
            return "the serving key does not match its certificate"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"unreadable ({type(exc).__name__})"
    if ca.not_valid_after_utc - now < before:
        return f"the CA expires at {ca.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    if cert.not_valid_after_utc - now < before:
        return f"the certificate expires at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    if cert.not_valid_before_utc > now:
        return "the certificate is not valid yet"
    if not _signed_by(cert, ca):
        return "the certificate is not signed by the CA"
    if not _covers(cert, sans):
        return "the certificate does not cover every admission host"
    return None


def renew(
    bundle: CertBundle, hosts: Iterable[str], now: datetime, *, before: timedelta = RENEW_BEFORE
) -> CertBundle:
    """A new serving certificate, under the same CA while that is good for `before` more;
    else (or when the CA is unusable) under a new CA, the old one kept in the bundle while it
    is still valid."""
    sans = parse_hosts(hosts)
    try:
        ca, ca_key = bundle.ca, _ca_key(bundle)
        usable = _pair_matches(ca, bundle.ca_key_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        usable = False
    if usable and ca.not_valid_after_utc - now >= before:
        cert, key = _issue(ca, ca_key, sans, now)
        return CertBundle(bundle.ca_pem, bundle.ca_key_pem, _pem(cert), _pem_key(key))
    new_ca, new_key = _new_ca(now)
    cert, key = _issue(new_ca, new_key, sans, now)
    ca_pem = _pem(new_ca)
    if usable and ca.not_valid_after_utc > now:
        ca_pem += _pem(ca)
    return CertBundle(ca_pem, _pem_key(new_key), _pem(cert), _pem_key(key))


def to_secret_data(bundle: CertBundle) -> dict[str, str]:
    """The Secret's `data` (base64)."""
    raw = {
        CA_CERT_KEY: bundle.ca_pem,
        CA_KEY_KEY: bundle.ca_key_pem,
        TLS_CERT_KEY: bundle.cert_pem,
        TLS_KEY_KEY: bundle.key_pem,
    }
    return {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}


def from_secret_data(data: Mapping[str, str]) -> CertBundle:
    """A bundle from a Secret's `data`; InputError naming the key that is missing or bad."""
    values: dict[str, bytes] = {}
    for key in (CA_CERT_KEY, CA_KEY_KEY, TLS_CERT_KEY, TLS_KEY_KEY):
        raw = data.get(key)
        if not raw:
            raise InputError(f"data.{key}", "missing or empty")
        try:
            values[key] = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"data.{key}", "not base64") from exc
        if b"-----BEGIN " not in values[key]:
            raise InputError(f"data.{key}", "not PEM")
    return CertBundle(
        values[CA_CERT_KEY], values[CA_KEY_KEY], values[TLS_CERT_KEY], values[TLS_KEY_KEY]
    )
