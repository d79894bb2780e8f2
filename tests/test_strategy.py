"""The kit's strategy plugin (tools/ansible/strategy/mitogen_linear.py) makes two of Mitogen's
costs once per run: its scan of what a module imports gives the same answer with the compile
cache and sees an edited file; the collections listed once are the ones Ansible lists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ansible_mitogen.module_finder as finder
from ansible.plugins.loader import init_plugin_loader

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tools" / "ansible" / "strategy" / "mitogen_linear.py"
spec = importlib.util.spec_from_file_location("kit_strategy", PLUGIN)
strategy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(strategy)

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
    init_plugin_loader()  # as ansible-playbook does before it runs a play
    listed = strategy.listed_once()
    assert list(listed()) == list(strategy._list_collection_dirs())
    assert any(path.endswith(b"ansible_collections/community/crypto") for path in listed())
    # With search paths or a filter it lists again, as Ansible's own function does.
    assert list(listed(coll_filter="community.crypto")) == list(
        strategy._list_collection_dirs(coll_filter="community.crypto")
    )
