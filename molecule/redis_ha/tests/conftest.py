"""Fixtures for the redis_ha scenario: each test runs against both groups (Redis, Valkey)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kit_checks import Connection, hosts_in, hostvars, parse_info


@dataclass
class Group:
    """One Sentinel-managed group as the inventory describes it."""

    name: str
    flavor: str
    master_name: str
    nodes: dict[str, str]  # inventory host -> address
    sentinels: dict[str, str]
    admin: tuple[str, str]
    sentinel_password: str
    app: tuple[str, str]
    down_after_ms: int

    @property
    def service(self) -> str:
        return f"{self.flavor}-server"

    def node(self, address: str, user: tuple[str, str] | None = None) -> Connection:
        username, password = user or self.admin
        return Connection(address, 6379, username, password, timeout=1.0)

    def sentinel(self, address: str) -> Connection:
        return Connection(address, 26379, None, self.sentinel_password, timeout=1.0)

    def masters_named(self) -> dict[str, str | None]:
        """What each reachable Sentinel says the master is ("ip:port")."""
        named = {}
        for address in self.sentinels.values():
            try:
                with self.sentinel(address) as conn:
                    reply = conn.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                named[address] = ":".join(reply) if reply else None
            except OSError:
                named[address] = None
        return named

    def role(self, address: str) -> dict[str, str]:
        with self.node(address) as conn:
            return parse_info(conn.command("INFO", "replication"))

    def current_master(self) -> str:
        answers = {a for a in self.masters_named().values() if a}
        assert len(answers) == 1, f"Sentinels disagree on the master: {answers}"
        return answers.pop().split(":")[0]

    def host_of(self, address: str) -> str:
        """The inventory name of the data node at `address`."""
        return next(h for h, a in self.nodes.items() if a == address)


def load_group(group: str) -> Group:
    members = hosts_in(group)
    data = [h for h in members if h in hosts_in("redis")]
    watchers = [h for h in members if h in hosts_in("redis_sentinel")]
    v = hostvars(members[0])
    app = v["redis_acl_app_users"][0]
    return Group(
        name=group,
        flavor=v["redis_flavor"],
        master_name=v.get("redis_ha_master_name", "kit"),
        nodes={h: hostvars(h)["kit_address"] for h in data},
        sentinels={h: hostvars(h)["kit_address"] for h in watchers},
        admin=(v.get("redis_acl_admin_user", "kit-admin"), v["redis_acl_admin_password"]),
        sentinel_password=v["redis_sentinel_password"],
        app=(app["name"], app["password"]),
        down_after_ms=int(v["redis_sentinel_down_after_ms"]),
    )


@pytest.fixture(scope="module", params=["group_a", "group_b"], ids=["redis-debian12", "valkey-debian13"])
def group(request) -> Group:
    return load_group(request.param)
