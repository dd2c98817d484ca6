import uuid

import pytest
from django_q.conf import Conf


@pytest.fixture
def cluster_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A cluster name of the test's own: /readyz and /metrics then see only the clusters it
    starts, not one that another test of this process (a live stack) keeps up under the usual name."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(Conf, "Q_STAT", f"django_q:{name}:cluster")
    monkeypatch.setattr(Conf, "PREFIX", name)  # the salt of the statuses' signatures
    return name
