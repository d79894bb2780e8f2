"""This scenario deploys the kit as an operator installs it: the collection built from the work
tree and installed alone (tools/install-collection.sh), not the work tree itself."""

from __future__ import annotations

import subprocess

from kit_checks import installed_collection


def test_the_plays_roles_and_modules_come_from_the_installed_collection():
    collection = installed_collection()
    assert (collection / "roles/redis/tasks/main.yml").is_file()
    for module in ("redis_ha_master", "redis_sentinel_monitor", "redis_sentinel_forget"):
        doc = subprocess.run(["ansible-doc", f"kit.jobqueue.{module}"], capture_output=True, text=True)
        assert doc.returncode == 0, doc.stderr
        assert str(collection) in doc.stdout, f"{module} documented from elsewhere"
