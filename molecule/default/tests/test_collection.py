"""The platform was deployed by `kit.jobqueue.site` from the installed collection."""

from __future__ import annotations

import os
from pathlib import Path

from kit_checks import installed_collection


def test_site_and_the_apps_source_come_from_the_installed_collection():
    collection = installed_collection()
    assert (collection / "playbooks/site.yml").is_file()
    assert Path(os.environ["KIT_ROOT"]) == collection  # the app is built from its app/
