#!/usr/bin/env python3
"""Check monitoring/ (run by `make lint`): the alert rules with promtool (syntax, then their
unit tests), every alert fired by at least one unit test, the example Prometheus
configuration, and the Grafana dashboard: its layout and every panel's PromQL, which promtool
parses once Grafana's variables are replaced."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
DASHBOARD = ROOT / "monitoring" / "grafana" / "fridge-dashboard.json"
PROMTOOL = str(ROOT / "tools" / "promtool.sh")
# What Grafana puts in place of its variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": "fridge"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)  # noqa: S603 (our own files)
    if done.returncode != 0:
        sys.exit(f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def alerts_without_a_firing_test() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "fridge-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "fridge-alerts.test.yml").read_text())
    fired = {
        t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]
    }
    return alerts - fired


def dashboard_problems(dashboard: dict) -> list[str]:
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dashboard:
            problems.append(f"no {key!r}")
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {ids}")
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard.get("panels", []):
        title = panel.get("title", f"panel {panel.get('id')}")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{title}: datasource is not the dashboard's ${{datasource}} variable")
        if not panel.get("targets"):
            problems.append(f"{title}: no query")
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    problems.append(f"{title} overlaps {cells[x, y]} at x={x} y={y}")
                cells[x, y] = title
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: wider than Grafana's 24 columns")
    return sorted(set(problems))


def queries(dashboard: dict) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((f"{panel['title']} {target['refId']}", expr))
    return found


def main() -> int:
    promtool("check", "rules", "fridge-alerts.yml")
    promtool("test", "rules", "fridge-alerts.test.yml")
    promtool("check", "config", "--syntax-only", "prometheus.example.yml")
    untested = alerts_without_a_firing_test()
    if untested:
        sys.exit(f"alerts no unit test fires (fridge-alerts.test.yml): {', '.join(sorted(untested))}")
    dashboard = json.loads(DASHBOARD.read_text())
    problems = dashboard_problems(dashboard)
    if problems:
        sys.exit("Grafana dashboard " + DASHBOARD.name + ":\n  " + "\n  ".join(problems))
    exprs = queries(dashboard)
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dashboard.yml").write_text(yaml.safe_dump(rules))
        promtool("check", "rules", "dashboard.yml", cwd=Path(tmp))
    print(f"monitoring ok: alert rules and their tests, example config, {len(exprs)} dashboard queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
