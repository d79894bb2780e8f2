"""kit.jobqueue.controller_command (plugins/action/controller_command.py): a command run on the
controller by the worker itself, reported as ansible.builtin.command reports one. Run through
ansible-playbook, as the roles use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}

PLAY = """
- hosts: somewhere
  gather_facts: false
  tasks:
    - name: A command that works
      kit.jobqueue.controller_command:
        argv: [sh, -c, 'echo one; echo two; echo err >&2; pwd', "{{ 'x' }}"]
        chdir: "{{ out | dirname }}"
      register: worked
    - name: A command that fails
      kit.jobqueue.controller_command:
        argv: [sh, -c, 'echo noise; echo "it broke: no wheel" >&2; exit 3']
      register: broke
      ignore_errors: true
    - name: A program that does not exist
      kit.jobqueue.controller_command:
        argv: [/nonexistent/program, x]
      register: missing
      ignore_errors: true
    - name: Report
      ansible.builtin.copy:
        content: "{{ {'worked': worked, 'broke': broke, 'missing': missing} | to_json }}"
        dest: "{{ out }}"
      check_mode: false
      delegate_to: localhost
"""


def play(tmp_path: Path, *args: str) -> dict:
    (tmp_path / "play.yml").write_text(PLAY)
    # A host that does not exist: the action must never connect to it.
    (tmp_path / "hosts.ini").write_text(
        "[all]\nsomewhere ansible_host=192.0.2.1 ansible_connection=ssh\n"
        f"[all:vars]\nansible_python_interpreter={sys.executable}\n"
    )
    out = tmp_path / "out.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.ini"),
            str(tmp_path / "play.yml"),
            "-e",
            f"out={out}",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, **PLAIN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return json.loads(out.read_text())


def test_it_reports_the_command_as_command_does_and_fails_with_its_error(tmp_path):
    got = play(tmp_path)
    worked, broke = got["worked"], got["broke"]
    assert worked["rc"] == 0
    assert worked["changed"] is True
    assert not worked.get("failed")
    assert worked["stdout_lines"] == ["one", "two", str(tmp_path)]
    assert worked["stderr_lines"] == ["err"]
    assert broke["failed"] is True
    assert broke["rc"] == 3
    assert broke["msg"] == "sh -c exited with 3: it broke: no wheel"
    missing = got["missing"]
    assert missing["failed"] is True
    assert missing["msg"].startswith("/nonexistent/program could not start: ")


def test_check_mode_runs_nothing(tmp_path):
    got = play(tmp_path, "--check")
    assert got["worked"]["skipped"] is True
    # As ansible.builtin.command: what reads the output finds it empty (the wheels loop).
    assert got["worked"]["stdout_lines"] == []
    assert got["worked"]["rc"] == 0
