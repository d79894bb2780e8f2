"""Run a command on the controller, in the Ansible worker itself (see
plugins/modules/controller_command.py for the documentation)."""

from __future__ import annotations

import subprocess
from typing import Any

from ansible.plugins.action import ActionBase


def run_argv(argv: list[str], chdir: str | None = None) -> dict[str, Any]:
    """The command's result, as ansible.builtin.command reports it; failed when it exits non-zero."""
    proc = subprocess.run(argv, cwd=chdir, capture_output=True, text=True, check=False)  # noqa: S603
    result: dict[str, Any] = {
        "cmd": argv,
        "rc": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "stdout_lines": proc.stdout.splitlines(),
        "stderr_lines": proc.stderr.splitlines(),
        "changed": True,
    }
    if proc.returncode:
        said = proc.stderr.strip().splitlines()[-20:] or proc.stdout.strip().splitlines()[-20:]
        result["failed"] = True
        result["msg"] = f"{' '.join(argv[:2])} exited with {proc.returncode}: " + "\n".join(said)
    return result


class ActionModule(ActionBase):
    """No connection to the task's host, no module sent anywhere: delegating ansible.builtin.command
    to localhost costs a round of its own (0.25-0.4 s a task under Mitogen); this costs the
    command's own time."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("argv", "chdir"))

    def run(self, tmp: str | None = None, task_vars: dict | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        argv = self._task.args.get("argv")
        if not isinstance(argv, list) or not argv:
            return {
                **result,
                "failed": True,
                "msg": "argv must be a non-empty list (the command and its arguments)",
            }
        if self._task.check_mode:
            return {**result, "skipped": True, "msg": "not run in check mode"}
        return {**result, **run_argv([str(arg) for arg in argv], self._task.args.get("chdir"))}
