"""The self-managed certificate: SANs for DNS names and IPs, a CA that verifies the serving
certificate (cryptography's verifier and a real TLS handshake), renewal under 30 days left,
and the Secret it lives in shared by replicas (create races and renew races)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from unit.admission.admission_fakes import FakeConfigs, FakeSecrets

from kubemeter_operator.admission import certs
from kubemeter_operator.admission.certstore import ensure_certificate, sync_ca_bundle
from kubemeter_operator.admission.server import bound_port, create_app, serve
from kubemeter_operator.admission.tls import ServingTls
from kubemeter_operator.errors import InputError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOSTS = ["km-admission.kubemeter.svc", "km-admission.kubemeter.svc.cluster.local", "127.0.0.1",
         "::1"]  # fmt: skip


@pytest.fixture(scope="module")
def bundle() -> certs.CertBundle:
    return certs.generate(HOSTS, NOW)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def verify(bundle: certs.CertBundle, host: str, at: datetime = NOW) -> None:
    store = Store(x509.load_pem_x509_certificates(bundle.ca_pem))
    verifier = PolicyBuilder().store(store).time(at).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() or ":" in host
        else x509.DNSName(host)
    )  # fmt: skip
    verifier.verify(bundle.cert, [])


def test_serving_certificate_names_every_host_as_a_dns_or_ip_san(bundle: certs.CertBundle):
    names = sans(bundle.cert)
    assert names.get_values_for_type(x509.DNSName) == HOSTS[:2]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]  # fmt: skip
    usage = bundle.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


@pytest.mark.parametrize("host", HOSTS)
def test_the_ca_verifies_the_serving_certificate_for_each_host(bundle: certs.CertBundle, host):
    verify(bundle, host)


def test_the_ca_does_not_verify_another_host(bundle: certs.CertBundle):
    with pytest.raises(x509.verification.VerificationError):
        verify(bundle, "evil.example.com")


def test_the_ca_is_a_ca_and_the_leaf_is_not(bundle: certs.CertBundle):
    ca = bundle.ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    leaf = bundle.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca.ca is True
    assert leaf.ca is False
    assert bundle.cert.not_valid_before_utc < NOW  # backdated for clock skew
    assert bundle.cert.not_valid_after_utc - NOW == certs.LEAF_VALIDITY


def test_hosts_are_validated():
    with pytest.raises(InputError) as err:
        certs.parse_hosts(["ok.svc", "not a host"])
    assert err.value.field == "admission_hosts[1]"
    with pytest.raises(InputError):
        certs.parse_hosts([" ", ""])


def test_a_fresh_bundle_needs_no_renewal(bundle: certs.CertBundle):
    assert certs.renewal_reason(bundle, HOSTS, NOW) is None


def test_renewal_is_due_under_30_days_before_the_leaf_expires(bundle: certs.CertBundle):
    end = bundle.cert.not_valid_after_utc
    assert certs.renewal_reason(bundle, HOSTS, end - timedelta(days=30, seconds=1)) is None
    reason = certs.renewal_reason(bundle, HOSTS, end - timedelta(days=29))
    assert reason is not None
    assert "certificate expires" in reason


def test_a_renewed_leaf_keeps_the_ca_so_the_ca_bundle_stays(bundle: certs.CertBundle):
    later = bundle.cert.not_valid_after_utc - timedelta(days=10)
    renewed = certs.renew(bundle, HOSTS, later)
    assert renewed.ca_pem == bundle.ca_pem
    assert renewed.cert_pem != bundle.cert_pem
    assert certs.renewal_reason(renewed, HOSTS, later) is None
    verify(renewed, "127.0.0.1", later)


def test_a_ca_near_its_end_is_replaced_and_the_old_one_stays_in_the_bundle(bundle):
    later = bundle.ca.not_valid_after_utc - timedelta(days=20)
    reason = certs.renewal_reason(bundle, HOSTS, later)
    assert reason is not None
    assert "CA expires" in reason
    renewed = certs.renew(bundle, HOSTS, later)
    cas = x509.load_pem_x509_certificates(renewed.ca_pem)
    assert len(cas) == 2
    assert cas[1] == bundle.ca
    assert cas[0] != bundle.ca
    assert certs.renewal_reason(renewed, HOSTS, later) is None
    verify(renewed, "km-admission.kubemeter.svc", later)


def test_new_hosts_need_a_new_certificate(bundle: certs.CertBundle):
    reason = certs.renewal_reason(bundle, [*HOSTS, "10.0.0.7"], NOW)
    assert reason is not None
    assert "host" in reason
    assert certs.renewal_reason(bundle, HOSTS[:1], NOW) is None  # a subset is covered


def test_a_key_that_does_not_match_is_renewed(bundle: certs.CertBundle):
    other = certs.generate(HOSTS, NOW)
    mixed = certs.CertBundle(bundle.ca_pem, bundle.ca_key_pem, bundle.cert_pem, other.key_pem)
    assert "does not match" in str(certs.renewal_reason(mixed, HOSTS, NOW))
    foreign = certs.CertBundle(bundle.ca_pem, bundle.ca_key_pem, other.cert_pem, other.key_pem)
    assert "not signed by the CA" in str(certs.renewal_reason(foreign, HOSTS, NOW))


def test_secret_data_round_trips_and_bad_data_names_the_key(bundle: certs.CertBundle):
    data = certs.to_secret_data(bundle)
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert certs.from_secret_data(data) == bundle
    with pytest.raises(InputError) as err:
        certs.from_secret_data({**data, "tls.key": ""})
    assert err.value.field == "data.tls.key"
    with pytest.raises(InputError) as err:
        certs.from_secret_data({**data, "ca.crt": "!!"})
    assert err.value.field == "data.ca.crt"


def test_a_real_tls_client_trusting_the_ca_reaches_the_webhook():
    now = datetime.now(UTC)
    bundle = certs.generate(HOSTS, now)

    async def main() -> None:
        async def decide(_: object) -> object:
            raise AssertionError("not called")

        tls = ServingTls(bundle)
        runner = await serve(create_app(decide), host="127.0.0.1", port=0,  # type: ignore[arg-type]
                             ssl_context=tls.context)  # fmt: skip
        try:
            client_ctx = ssl.create_default_context(cadata=bundle.ca_pem.decode())
            url = f"https://127.0.0.1:{bound_port(runner)}/healthz"
            async with aiohttp.ClientSession() as session:
                async with session.get(url, ssl=client_ctx) as resp:
                    assert resp.status == 200
                # a renewed certificate under a new CA is served from the next handshake on
                renewed = certs.renew(bundle, HOSTS, now, before=certs.CA_VALIDITY * 2)
                tls.load(renewed)
            fresh = ssl.create_default_context(cadata=renewed.ca_pem.decode())
            async with aiohttp.ClientSession() as session:
                async with session.get(url, ssl=fresh) as resp:
                    assert resp.status == 200
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(url.replace("127.0.0.1", "localhost"), ssl=fresh)
        finally:
            await runner.cleanup()

    asyncio.run(main())


# -- the Secret, shared by replicas ------------------------------------------------------


def test_the_first_replica_creates_the_secret_and_the_next_reuses_it():
    store = FakeSecrets()
    first = ensure_certificate(store, HOSTS, NOW)
    second = ensure_certificate(store, HOSTS, NOW + timedelta(minutes=1))
    assert first == second
    assert store.writes == 1
    assert store.data is not None
    assert certs.from_secret_data(store.data) == first


def test_losing_the_create_race_uses_the_winners_certificate():
    store = FakeSecrets()
    winner = certs.generate(HOSTS, NOW)
    store.racer = lambda: setattr(store, "data", certs.to_secret_data(winner))
    assert ensure_certificate(store, HOSTS, NOW) == winner


def test_a_certificate_under_30_days_is_renewed_in_the_secret():
    store = FakeSecrets()
    first = ensure_certificate(store, HOSTS, NOW)
    later = first.cert.not_valid_after_utc - timedelta(days=29)
    renewed = ensure_certificate(store, HOSTS, later)
    assert renewed != first
    assert renewed.ca_pem == first.ca_pem
    assert store.data is not None
    assert certs.from_secret_data(store.data) == renewed
    assert ensure_certificate(store, HOSTS, later) == renewed  # once


def test_losing_the_renew_race_uses_the_other_replicas_renewal():
    store = FakeSecrets()
    first = ensure_certificate(store, HOSTS, NOW)
    later = first.cert.not_valid_after_utc - timedelta(days=29)
    theirs = certs.renew(first, HOSTS, later)

    def other_replica_renews() -> None:
        store.data, store.version = certs.to_secret_data(theirs), store.version + 1

    store.racer = other_replica_renews
    assert ensure_certificate(store, HOSTS, later) == theirs


def test_an_unusable_secret_is_replaced():
    store = FakeSecrets()
    store.data, store.version = {"tls.crt": "eA=="}, 7
    bundle = ensure_certificate(store, HOSTS, NOW)
    assert certs.renewal_reason(bundle, HOSTS, NOW) is None
    assert store.version == 8


def test_ca_bundle_is_patched_into_every_webhook_that_differs(bundle: certs.CertBundle):
    import base64

    wanted = base64.b64encode(bundle.ca_pem).decode()
    configs = FakeConfigs({"pods.kubemeter.dev": "", "scale.kubemeter.dev": wanted})
    assert sync_ca_bundle(configs, "kubemeter-admission", bundle.ca_pem) is True
    assert configs.patches == [{"pods.kubemeter.dev": wanted}]
    assert sync_ca_bundle(configs, "kubemeter-admission", bundle.ca_pem) is False
    assert len(configs.patches) == 1


def test_a_missing_configuration_is_reported_not_fatal(bundle: certs.CertBundle):
    assert sync_ca_bundle(FakeConfigs(None), "kubemeter-admission", bundle.ca_pem) is None
