"""Fixtures of the notification tests (helpers in support/webhooks.py).

- `readme_verify`: the `verify` example of README.md "Webhooks", executed as written.
- `receiver`: a real HTTP receiver on 127.0.0.1 that verifies signatures with it.
- `clock`: a settable `now` for the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.webhooks import Clock, Receiver, Verify
from support.webhooks import readme_verify as _readme_verify


@pytest.fixture(scope="session")
def readme_verify() -> Verify:
    return _readme_verify()


@pytest.fixture
def receiver(readme_verify: Verify) -> Iterator[Receiver]:
    r = Receiver(readme_verify)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()
