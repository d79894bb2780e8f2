"""This scenario deploys the kit as an operator installs it: the collection built from the work
tree and installed alone (tools/install-collection.sh), not the work tree itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def test_the_plays_roles_and_modules_come_from_the_installed_collection():
    installed = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "collections"
    assert os.environ["ANSIBLE_COLLECTIONS_PATH"] == str(installed)
    listed = subprocess.run(
        ["ansible-galaxy", "collection", "list", "kit.jobqueue", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = {path: names for path, names in json.loads(listed.stdout).items() if "kit.jobqueue" in names}
    assert list(found) == [str(installed / "ansible_collections")], found
    collection = installed / "ansible_collections/kit/jobqueue"
    assert not collection.is_symlink(), "a link to the work tree, not an installed copy"
    manifest = json.loads((collection / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["name"] == "jobqueue"
    assert (collection / "roles/redis/tasks/main.yml").is_file()
    assert not (collection / "molecule").exists(), "tests are not shipped"
    assert not (collection / "inventories").exists(), "inventories (and their secrets) are not shipped"
    for module in ("redis_ha_master", "redis_sentinel_monitor", "redis_sentinel_forget"):
        doc = subprocess.run(["ansible-doc", f"kit.jobqueue.{module}"], capture_output=True, text=True)
        assert doc.returncode == 0, doc.stderr
        assert str(collection) in doc.stdout, f"{module} documented from elsewhere"
