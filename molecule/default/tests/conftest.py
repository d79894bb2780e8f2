"""Fixtures for the full-stack scenario: HTTP through the VirtualHost, and the Redis group."""

from __future__ import annotations

import pytest
from kit_checks import Group, Http, hosts_in, hostvars, load_group
from kit_faults import Platform


@pytest.fixture(scope="module")
def http() -> Http:
    return Http(hostvars(hosts_in("web")[0])["kit_address"])


@pytest.fixture(scope="module")
def group() -> Group:
    return load_group(sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))))


@pytest.fixture(scope="module")
def platform() -> Platform:
    return Platform.from_inventory()
