"""The kit's strategy plugin (tools/ansible/strategy/mitogen_linear.py) makes two of Mitogen's
costs once per run: its scan of what a module imports gives the same answer with the compile
cache and sees an edited file; the collections listed once are the ones Ansible lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ansible_mitogen.module_finder as finder

STRATEGIES = Path(__file__).resolve().parents[1] / "tools" / "ansible" / "strategy"
sys.path.insert(0, str(STRATEGIES))
import mitogen_linear  # noqa: E402, F401  (the plugin, as ansible.cfg's strategy_plugins loads it)

MODULE_UTILS = Path(finder.__file__).parents[1] / "ansible" / "module_utils"
SEARCH = [str(MODULE_UTILS)]


def _scan(path: Path) -> list[tuple[str, str, bool]]:
    return finder.scan("kit_probe", str(path), SEARCH)


def test_the_cache_is_in_place_and_changes_no_answer(tmp_path: Path, monkeypatch) -> None:
    assert finder.compile is not compile  # the plugin's cache, not the built-in
    module = tmp_path / "probe.py"
    module.write_text("from ansible.module_utils.basic import AnsibleModule\n")
    cached = _scan(module)
    assert _scan(module) == cached
    monkeypatch.setattr(finder, "compile", compile)
    assert _scan(module) == cached
    names = {name for name, _, _ in cached}
    assert "ansible.module_utils.basic" in names
    assert "ansible.module_utils.common.text.converters" in names  # basic.py's own imports


def test_an_edited_module_is_scanned_again(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from ansible.module_utils.common.text.converters import to_text\n")
    before = {name for name, _, _ in _scan(module)}
    module.write_text("from ansible.module_utils.urls import open_url\n")
    after = {name for name, _, _ in _scan(module)}
    assert "ansible.module_utils.urls" not in before
    assert "ansible.module_utils.urls" in after


def test_the_collections_are_listed_once_with_the_same_answer() -> None:
    # In a process of its own: Ansible's collection loader, once set up, stays in sys.meta_path.
    probe = f"""
import json, sys
from ansible.plugins.loader import init_plugin_loader
sys.path.insert(0, {str(STRATEGIES)!r})
import mitogen_linear as strategy
init_plugin_loader()  # as ansible-playbook does before it runs a play
ansible_list, calls = strategy._list_collection_dirs, []
strategy._list_collection_dirs = lambda *args, **kwargs: calls.append(1) or ansible_list(*args, **kwargs)
listed = strategy.listed_once()
print(json.dumps({{
    "once": [p.decode() for p in listed()],
    "again": [p.decode() for p in listed()],
    "calls": len(calls),
    "ansible": [p.decode() for p in ansible_list()],
    "filtered": [p.decode() for p in listed(coll_filter="community.crypto")],
}}))
"""
    found = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout)
    assert found["once"] == found["again"] == found["ansible"]
    assert found["calls"] == 1  # listed when the play starts, not at each task
    assert any(path.endswith("ansible_collections/community/crypto") for path in found["once"])
    # With search paths or a filter it lists again, as Ansible's own function does.
    assert [path.rsplit("/", 2)[-2:] for path in found["filtered"]] == [["community", "crypto"]]
