#!/usr/bin/python
"""Documentation of the controller_command action (plugins/action/controller_command.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: controller_command
short_description: Run a command on the controller, without a connection to any host
author: kit maintainers
description:
- Runs O(argv) on the Ansible controller, in the worker that runs the task for its host, and reports
  it as M(ansible.builtin.command) does (rc, stdout, stderr, stdout_lines); fails when it exits
  non-zero, with the end of its standard error.
- "Used instead of M(ansible.builtin.command) with C(delegate_to: localhost), which opens a
  connection to the controller for each host and task."
- Not run in check mode (skipped, with an empty output), like M(ansible.builtin.command); always
  reports changed unless the task says otherwise (C(changed_when)).
- Runs with the environment of C(ansible-playbook) itself; the task's C(environment) is not
  applied.
options:
  argv:
    description: The command and its arguments (no shell).
    type: list
    elements: str
    required: true
  chdir:
    description: Directory to run it in.
    type: path
"""

EXAMPLES = r"""
- name: Build the wheelhouse on the controller
  kit.jobqueue.controller_command:
    argv: [sh, "{{ role_path }}/files/wheelhouse.sh", "{{ ansible_playbook_python }}", /tmp/wheelhouse]
  register: built
  changed_when: built.stdout_lines | select('match', 'changed ') | list | length > 0
"""

RETURN = r"""
rc:
  description: The command's exit status.
  type: int
  returned: always
stdout_lines:
  description: Its standard output, line by line.
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "argv": {"type": "list", "elements": "str", "required": True},
            "chdir": {"type": "path"},
        }
    )
    module.fail_json(msg="controller_command runs on the controller, through its action plugin only")


if __name__ == "__main__":
    main()
