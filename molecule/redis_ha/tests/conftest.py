"""Fixtures for the redis_ha scenario: each test runs against both groups (Redis, Valkey)."""

from __future__ import annotations

import pytest
from kit_checks import Group, hosts_in, load_group


@pytest.fixture(scope="module", params=["group_a", "group_b"], ids=["redis-debian12", "valkey-debian13"])
def group(request) -> Group:
    group = load_group(hosts_in(request.param))
    group.name = request.param
    return group
