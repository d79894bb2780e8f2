"""Lookup `kit.jobqueue.vars_files`: the variable files Ansible reads from an inventory's
`group_vars/` and `host_vars/`, at any depth (playbooks/preflight.yml reads them for secrets
in clear text). Runs on the controller, in Ansible's own process: no module, no connection."""

from __future__ import annotations

import os

from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: vars_files
short_description: The variable files of an inventory's group_vars and host_vars
description:
  - Every file Ansible loads as variables under the inventory directories given, at any depth
    and through symbolic links, in a stable order; hidden files and other extensions are left
    out, as Ansible leaves them.
options:
  _terms:
    description: Inventory directories.
    required: true
"""

RETURN = r"""
_raw:
  description: Paths of the files.
  type: list
  elements: str
"""

# The extensions Ansible's host_group_vars plugin reads (none, or YAML's and JSON's).
EXTENSIONS = ("", ".yml", ".yaml", ".json")


def vars_files(inventory_dir: str) -> list[str]:
    found: list[str] = []
    for top in ("group_vars", "host_vars"):
        for root, dirs, files in os.walk(os.path.join(inventory_dir, top), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                os.path.join(root, name)
                for name in sorted(files)
                if not name.startswith(".") and os.path.splitext(name)[1] in EXTENSIONS
            ]
    return found


class LookupModule(LookupBase):
    def run(self, terms: list[str], variables: dict | None = None, **kwargs: object) -> list[str]:
        return [path for term in terms for path in vars_files(term)]
