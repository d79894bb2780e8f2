#!/usr/bin/python
"""Which files a service reads only at start changed after its running process started."""

from __future__ import annotations

DOCUMENTATION = r"""
module: changed_since_start
short_description: Find the files a running service read before they last changed
author: kit maintainers
description:
- Lists which of O(paths) were modified after the main process of the systemd unit O(service)
  started. A service that reads them only at start (its unit's drop-ins, a certificate, a config
  file it reads once) runs without those changes until it is restarted.
- A restart notified by a run that was lost before its handlers ran (a task failing on the host,
  the controller's connection cut) leaves exactly that, and the next run, finding the files as it
  wants them, would notify nothing; the kit's roles read this first and restart.
- Nothing is listed when the unit is not active (its next start reads every file), and a path
  that does not exist is skipped. Never changes anything.
- Also says whether systemd has not loaded the unit's files since they changed
  (C(NeedDaemonReload)). A drop-in written by a run lost before its C(daemon-reload), then a
  restart by anything else (a crash, an operator), leaves the service started after the file
  but on the unit without it.
- C(NeedDaemonReload) is cleared by any C(daemon-reload) (a package's script, an operator's), so
  a service can also say what it was started on. O(unit_files) are the drop-ins that need a
  restart, and RV(unit_digest) their digest. A drop-in the kit's roles write with that digest
  (C(kit-started.conf)) has systemd note it in O(started_on) at each start, from the unit as
  it has loaded it; a note other than the digest of the files on disk is the same restart.
options:
  service:
    description: The systemd unit (C(.service) may be left out).
    type: str
    required: true
  paths:
    description: The files the service reads only when it starts.
    type: list
    elements: path
    required: true
  unit_files:
    description: The unit's drop-ins that need a restart, in a fixed order (a missing one counts as absent).
    type: list
    elements: path
    default: []
  started_on:
    description: >-
      The file in which the unit notes, at each start, the digest of O(unit_files) as systemd
      had loaded them. Absent (a start before the unit noted it): only C(NeedDaemonReload) says.
    type: path
  note_unit:
    description: >-
      The drop-in that has the unit note the digest at each start; RV(note_current) says whether
      it holds the digest of O(unit_files) as they are on disk (it is to be written again when not).
    type: path
"""

EXAMPLES = r"""
- name: Find what the server reads at start that changed after its start
  kit.jobqueue.changed_since_start:
    service: redis-server
    paths: [/etc/systemd/system/redis-server.service.d/kit-hardening.conf]
    unit_files: [/etc/systemd/system/redis-server.service.d/kit-hardening.conf]
    started_on: /run/kit-jobqueue/redis-server.unit
  register: changed_since_start

- name: Restart it on its unit as on disk
  ansible.builtin.systemd_service:
    name: redis-server
    state: restarted
    daemon_reload: true
  when: changed_since_start.paths or changed_since_start.unit_changed
"""

RETURN = r"""
started:
  description: When the unit's main process started (seconds since the epoch); null when it is not active.
  type: float
  returned: always
paths:
  description: The files of O(paths) modified after that, in their order.
  type: list
  elements: str
  returned: always
unit_changed:
  description: >-
    Whether the running process was started on other unit files than those on disk: systemd
    has not reloaded them since they changed, or O(started_on) notes another digest than
    RV(unit_digest). A restart then needs a daemon-reload first. False when the unit is not active.
  type: bool
  returned: always
unit_digest:
  description: The SHA-256 of O(unit_files) as they are on disk (their paths and contents).
  type: str
  returned: always
started_on:
  description: What O(started_on) notes, or null (no note, or the unit is not active).
  type: str
  returned: always
note_current:
  description: Whether O(note_unit) exists and holds RV(unit_digest); false without O(note_unit).
  type: bool
  returned: always
"""

import hashlib
import os
from datetime import UTC, datetime

from ansible.module_utils.basic import AnsibleModule

# systemctl show --timestamp=us+utc: "Mon 2026-12-07 14:16:54.473538 UTC". The weekday, always in
# English, is dropped: strptime reads %a in the locale the module runs in (de_DE: "Mo").
_FORMAT = "%Y-%m-%d %H:%M:%S.%f UTC"
PROPERTIES = ("ActiveState", "ExecMainStartTimestamp", "NeedDaemonReload")


def fields(show: str) -> dict[str, str]:
    """`systemctl show -p ...`'s answer, property -> value."""
    return dict(line.split("=", 1) for line in show.splitlines() if "=" in line)


def start_time(show: dict[str, str]) -> float | None:
    """The main process's start (seconds since the epoch), read with --timestamp=us+utc, or None
    when the unit is not active."""
    stamp = show.get("ExecMainStartTimestamp", "").strip()
    if show.get("ActiveState") != "active" or not stamp:
        return None
    return datetime.strptime(stamp.split(" ", 1)[-1], _FORMAT).replace(tzinfo=UTC).timestamp()


def changed_after(started: float | None, paths: list[str]) -> list[str]:
    """The paths that exist and were modified after `started` (none when it is None)."""
    if started is None:
        return []
    return [path for path in paths if os.path.exists(path) and os.stat(path).st_mtime > started]


def unit_digest(paths: list[str]) -> str:
    """The SHA-256 of the files in `paths`, each with its path (a missing one as absent)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                content = b"present\0" + handle.read()
        except FileNotFoundError:
            content = b"absent"
        digest.update(path.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def noted(path: str | None) -> str | None:
    """The digest a start noted in `path`, or None when there is none."""
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def note_holds(path: str | None, digest: str) -> bool:
    """The note's drop-in at `path` exists and writes `digest`."""
    if not path:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            return digest in handle.read()
    except FileNotFoundError:
        return False


def unit_changed(show: dict[str, str], started: float | None, started_on: str | None, digest: str) -> bool:
    """The running process was started on other unit files than those on disk: systemd has
    not reloaded them since they changed, or its start noted another digest."""
    if started is None:
        return False
    return show.get("NeedDaemonReload") == "yes" or started_on not in (None, digest)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "paths": {"type": "list", "elements": "path", "required": True},
            "unit_files": {"type": "list", "elements": "path", "default": []},
            "started_on": {"type": "path"},
            "note_unit": {"type": "path"},
        },
        supports_check_mode=True,
    )
    argv = ["systemctl", "show", "--timestamp=us+utc", *(f"--property={name}" for name in PROPERTIES)]
    rc, out, err = module.run_command([*argv, module.params["service"]])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {module.params['service']} failed: {err.strip()}")
    show = fields(out)
    try:
        started = start_time(show)
    except ValueError as error:
        module.fail_json(msg=f"cannot read when {module.params['service']} started: {error}")
    digest = unit_digest(module.params["unit_files"])
    started_on = noted(module.params["started_on"]) if started is not None else None
    module.exit_json(
        changed=False,
        started=started,
        paths=changed_after(started, module.params["paths"]),
        unit_changed=unit_changed(show, started, started_on, digest),
        unit_digest=digest,
        started_on=started_on,
        note_current=note_holds(module.params["note_unit"], digest),
    )


if __name__ == "__main__":
    main()
