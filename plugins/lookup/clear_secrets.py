"""Lookup `kit.jobqueue.clear_secrets`: the secrets in clear text in an inventory's variable
files, by file (playbooks/preflight.yml refuses them).

A secret is every value of a file named vault* and every `vault_*` variable of another file,
in the files Ansible reads under `group_vars/` and `host_vars/` at any depth. A file encrypted
as a whole (`$ANSIBLE_VAULT;` on its first line) holds none in clear; neither does a value that
is an inline `!vault` (ansible-vault encrypt_string), a template (`{{ ... }}`: it comes from
elsewhere, a secrets manager's lookup say) or empty. The files are parsed here, on the
controller, without Ansible's templating: nothing is decrypted, looked up or printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: clear_secrets
short_description: The secrets in clear text in an inventory's variable files
description:
  - For each inventory directory given, the variable files under C(group_vars/) and
    C(host_vars/) (at any depth, through links; hidden files and other extensions left out, as
    Ansible leaves them) that hold a secret in clear text, with the secrets' names.
  - A secret is every value of a file named C(vault*) and every C(vault_*) variable elsewhere;
    an inline C(!vault), a template or an empty value is none, and so is a file encrypted whole.
options:
  _terms:
    description: Inventory directories.
    required: true
"""

RETURN = r"""
_raw:
  description: One entry per file holding secrets in clear text.
  type: list
  elements: dict
  contains:
    file: {description: The file's path., type: str}
    names: {description: The secrets' names, in the file's order., type: list, elements: str}
"""

# The extensions Ansible's host_group_vars plugin reads (none, or YAML's and JSON's).
EXTENSIONS = ("", ".yml", ".yaml", ".json")
VAULT_HEADER = "$ANSIBLE_VAULT;"


class _Encrypted:
    """An inline !vault value."""


class _Loader(yaml.SafeLoader):
    """YAML as Ansible writes it: !vault values stay sealed, !unsafe ones are plain text."""


_Loader.add_constructor("!vault", lambda loader, node: _Encrypted())
_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def vars_files(inventory_dir: str) -> list[Path]:
    """The files Ansible reads as variables under the inventory's group_vars/ and host_vars/."""
    found: list[Path] = []
    for top in ("group_vars", "host_vars") if inventory_dir else ():
        for root, dirs, files in os.walk(Path(inventory_dir, top), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                Path(root, name)
                for name in sorted(files)
                if not name.startswith(".") and os.path.splitext(name)[1] in EXTENSIONS
            ]
    return found


def in_clear(value: object) -> bool:
    if value is None or isinstance(value, _Encrypted):
        return False
    return not (isinstance(value, str) and ("{{" in value or "{%" in value))


def clear_secrets(path: Path) -> list[str]:
    """The names of the secrets `path` holds in clear text."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith(VAULT_HEADER):
        return []
    try:
        variables = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader, with !vault sealed)
    except yaml.YAMLError as error:
        raise AnsibleError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(variables, dict):
        return []
    every = path.name.lower().startswith("vault")
    return [
        str(name)
        for name, value in variables.items()
        if (every or str(name).startswith("vault_")) and in_clear(value)
    ]


class LookupModule(LookupBase):
    def run(self, terms: list[str], variables: dict | None = None, **kwargs: object) -> list[dict]:
        found = []
        for inventory_dir in terms:
            for path in vars_files(inventory_dir):
                if names := clear_secrets(path):
                    found.append({"file": str(path), "names": names})
        return found
