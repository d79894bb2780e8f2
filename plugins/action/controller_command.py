"""Run a command on the controller, in the Ansible worker itself (see
plugins/modules/controller_command.py for the documentation)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from ansible.plugins.action import ActionBase


def run_argv(argv: list[str], chdir: str | None = None) -> dict[str, Any]:
    """The command's result, as ansible.builtin.command reports it; failed when it exits non-zero
    or cannot start (no such program or directory)."""
    result: dict[str, Any] = {"cmd": argv, "changed": True}
    try:
        proc = subprocess.run(argv, cwd=chdir, capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as error:
        return {
            **result,
            **_output(127, "", str(error)),
            "failed": True,
            "msg": f"{argv[0]} could not start: {error}",
        }
    result.update(_output(proc.returncode, proc.stdout, proc.stderr))
    if proc.returncode:
        said = proc.stderr.strip().splitlines()[-20:] or proc.stdout.strip().splitlines()[-20:]
        result["failed"] = True
        result["msg"] = f"{' '.join(argv[:2])} exited with {proc.returncode}: " + "\n".join(said)
    return result


def _output(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    return {
        "rc": rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.splitlines(),
        "stderr_lines": stderr.splitlines(),
    }


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
        if self._task.check_mode:  # as ansible.builtin.command: skipped, with an empty output
            return {**result, **_output(0, "", ""), "skipped": True, "msg": "not run in check mode"}
        chdir = self._task.args.get("chdir")
        return {**result, **run_argv([str(arg) for arg in argv], chdir and os.path.expanduser(chdir))}
