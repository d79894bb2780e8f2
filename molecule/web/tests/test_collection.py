"""This scenario deploys the web tier as an operator installs the kit: the plays kit.jobqueue.web
and kit.jobqueue.workers, their roles and the app's source all come from the collection built
from the work tree and installed alone (tools/install-collection.sh)."""

from __future__ import annotations

import os
from pathlib import Path

from kit_checks import installed_collection


def test_the_plays_and_the_apps_source_come_from_the_installed_collection():
    collection = installed_collection()
    for play in ("web", "workers"):
        assert (collection / f"playbooks/{play}.yml").is_file()
    # The app is built from the collection's app/ (KIT_ROOT), which must ship what a build needs.
    assert Path(os.environ["KIT_ROOT"]) == collection
    for needed in ("pyproject.toml", "requirements.lock", "fridge/wsgi.py"):
        assert (collection / "app" / needed).is_file(), needed
    assert not (collection / "app/tests").exists(), "the app's tests are not shipped"
