"""The chart of one `make bench` report: python bench/chart.py <report.json> <chart.png>.

Run by tools/bench.py with .venv-bench's Python (matplotlib, bench/requirements.txt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt


def main(source: str, target: str) -> None:
    report = json.loads(Path(source).read_text())
    figure, (drain, rate, tail) = plt.subplots(1, 3, figsize=(15, 4.5))
    counts = [r["workers"] for r in report["drain"]]
    width = 0.27
    for offset, (kind, label) in enumerate(
        [("fridge", "kit's worker"), ("rq", "RQ Worker"), ("rq-simple", "RQ SimpleWorker")]
    ):
        xs = [i + (offset - 1) * width for i in range(len(counts))]
        drain.bar(xs, [r[f"{kind}_jobs_per_second"] for r in report["drain"]], width, label=label)
    drain.set(title="Drain, no-op jobs", xlabel="workers", ylabel="jobs/s", xticks=range(len(counts)))
    drain.set_xticklabels(counts)
    drain.legend()

    connections = [r["connections"] for r in report["http"]]
    xs = range(len(connections))
    for offset, (side, label) in enumerate([("enqueue", "enqueue"), ("hello", "hello-world")]):
        shifted = [x + (offset - 0.5) * 0.4 for x in xs]
        rate.bar(shifted, [r[side]["rps"] for r in report["http"]], 0.4, label=label)
        tail.bar(shifted, [r[side]["p99_ms"] for r in report["http"]], 0.4, label=label)
    rate.set(title="Through Apache + mod_wsgi", xlabel="connections", ylabel="requests/s", xticks=xs)
    tail.set(title="p99 latency", xlabel="connections", ylabel="ms", xticks=xs)
    tail.axhline(50, color="grey", linestyle="--", linewidth=1)
    for axes in (rate, tail):
        axes.set_xticklabels(connections)
        axes.legend()
    figure.suptitle(f"make bench, {report['date']} ({report['machine']['cpus']} cores)")
    figure.tight_layout()
    figure.savefig(target, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:3])
