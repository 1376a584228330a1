"""The benchmark's plot: deploy seconds against hosts (scripts/bench --plot FILE.png).

    python devtools/bench_plot.py BENCH.json FILE.png

Run by devtools/bench.py with the python of the benchmark's own venv (matplotlib is no requirement of the
product). Reads the rows that `scripts/bench --json` writes: deploy-noop-N and deploy-change-N, each with
the toolkit's median, the `ansible -m ping` floor and, when measured, the hand-written playbook.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# (row kind, figure key, label, style): one line each
LINES = (
    ("noop", "figure", "partnercerts deploy, no-op", dict(color="tab:blue", marker="o")),
    ("change", "figure", "partnercerts deploy, one renewed certificate", dict(color="tab:blue", marker="s", ls="--")),
    ("noop", "alt", "hand-written playbook, no-op", dict(color="tab:red", marker="o")),
    ("change", "alt", "hand-written playbook, one renewed certificate", dict(color="tab:red", marker="s", ls="--")),
    ("noop", "baseline", "ansible -m ping (one SSH round)", dict(color="tab:gray", marker="^", ls=":")),
)


def series(rows: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        parts = r["case"].split("-")
        if parts[0] != "deploy" or len(parts) != 3:
            continue
        for key in ("figure", "baseline", "alt"):
            if r.get(key) is not None:
                out.setdefault((parts[1], key), []).append((int(parts[2]), float(r[key])))
    return {k: sorted(v) for k, v in out.items()}


def plot(data: dict, png: Path) -> None:
    lines = series(data["rows"])
    if not lines:
        raise SystemExit("bench_plot: no deploy rows to plot (run the deploy case)")
    fig, (secs, per) = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    for kind, key, label, style in LINES:
        points = lines.get((kind, key))
        if not points:
            continue
        xs = [n for n, _ in points]
        secs.plot(xs, [s for _, s in points], label=label, **style)
        per.plot(xs, [s * 1000 / n for n, s in points], **style)
    hosts = sorted({n for pts in lines.values() for n, _ in pts})
    for ax in (secs, per):
        ax.set_xlabel("hosts")
        ax.set_xticks(hosts)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    secs.set_ylabel("seconds (median)")
    secs.set_title("deploy: wall time")
    per.set_ylabel("ms per host")
    per.set_title("deploy: cost per host")
    secs.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"partnercerts benchmark, size {data['size']}, median of {data['repeat']}; "
                 f"{data['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
