"""The tenant label that scopes the webhook: set on every namespace one Tenant owns, removed
where no Tenant owns it any more, never on a shared namespace (the standby that does not
label: test_admission_server)."""

from __future__ import annotations

from unit.admission.admission_fakes import ACME, GLOBEX, FakeNamespaces, tenant

from kubemeter_operator.admission.labels import (
    TENANT_LABEL,
    NamespaceLabeler,
    desired_labels,
    label_changes,
    label_value,
)


def test_each_owned_namespace_is_labelled_with_its_tenant():
    assert desired_labels({"acme": ACME, "globex": GLOBEX}) == {
        "acme-prod": "acme", "acme-dev": "acme", "globex-ml": "globex"}  # fmt: skip


def test_a_shared_namespace_carries_the_label_of_the_tenant_metering_bills():
    other = tenant("other", ["acme-prod", "other-ns"])  # "acme" sorts first: it owns acme-prod
    assert desired_labels({"acme": ACME, "other": other}) == {
        "acme-prod": "acme", "acme-dev": "acme", "other-ns": "other"}  # fmt: skip


def test_changes_set_missing_or_wrong_labels_and_remove_stale_ones_only():
    current = {"acme-prod": None, "acme-dev": "globex", "globex-ml": "globex",
               "old": "gone", "kube-system": None}  # fmt: skip
    desired = {"acme-prod": "acme", "acme-dev": "acme", "globex-ml": "globex", "future": "x"}
    assert label_changes(current, desired) == {"acme-prod": "acme", "acme-dev": "acme",
                                               "old": None}  # fmt: skip


def test_a_long_tenant_name_is_shortened_to_a_valid_label_value():
    name = "a" * 100 + ".b"
    value = label_value(name)
    assert len(value) <= 63
    assert value != label_value("a" * 100 + ".c")
    assert value[-1].isalnum()
    assert label_value("acme") == "acme"


def test_a_sync_labels_and_unlabels_once():
    store = FakeNamespaces({"acme-prod": None, "stale": "x"})
    labeler = NamespaceLabeler(store, lambda: {"acme": ACME}, lambda: True)
    assert labeler.sync_once() == {"acme-prod": "acme", "stale": None}
    assert store.state == {"acme-prod": "acme", "stale": None}
    assert labeler.sync_once() == {}
    assert TENANT_LABEL == "kubemeter.dev/tenant"
