"""The fault suite and its report: `scripts/inv chaos` runs the tests marked `fault` (tests/faults and the host
network and disk faults) and prints one row per fault."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from .. import ROOT

COLUMNS = (("fault", "fault"), ("runs", "runs"), ("result", "result"), ("outcome", "outcome"),
           ("keys_lost", "keys lost"), ("hosts_mixed", "hosts left mixed"))


def render_table(rows: list[dict]) -> str:
    """A Markdown table (readable as plain text too) of the fault runs, with a total line."""
    table = [[str(r.get(key, "")) for key, _ in COLUMNS] for r in rows]
    if rows:
        table.append(["total", str(sum(int(r.get("runs") or 0) for r in rows)),
                      "pass" if all(r.get("result") == "pass" for r in rows) else "FAIL", "",
                      str(sum(int(r.get("keys_lost") or 0) for r in rows)),
                      str(sum(int(r.get("hosts_mixed") or 0) for r in rows))])
    header = [title for _, title in COLUMNS]
    widths = [max(len(row[i]) for row in [header] + table) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in table]
    return "\n".join(out)


@task(help={"k": "only faults whose test matches this pytest -k expression",
            "json": "also write the rows as JSON to this file"})
def chaos(c, k=None, json=None):
    """Run the fault tests (Vault failover and sealing, crashes, concurrency, host network, disk); print their table."""
    with tempfile.TemporaryDirectory(prefix="partnercerts-chaos-") as tmp:
        report = Path(tmp) / "chaos.json"
        args = [sys.executable, "-m", "pytest", "tests", "-m", "fault", "-q", "-ra"]
        if k:
            args += ["-k", k]
        env = dict(os.environ, PARTNERCERTS_CHAOS_REPORT=str(report), PARTNERCERTS_CHAOS_QUIET="1")
        rc = subprocess.run(args, cwd=str(ROOT), env=env).returncode
        rows = json_load(report)
        if json and rows:
            Path(json).write_text(json_dumps(rows))
    if not rows:
        raise Exit(f"error: the fault suite recorded no runs (pytest exit {rc}); see its output above", code=rc or 1)
    print()
    print(render_table(rows))
    lost = sum(int(r["keys_lost"]) for r in rows)
    mixed = sum(int(r["hosts_mixed"]) for r in rows)
    failed = [r["fault"] for r in rows if r["result"] != "pass"]
    print(f"\n{sum(int(r['runs']) for r in rows)} fault runs, {lost} key(s) lost, {mixed} host(s) left mixed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if rc or failed or lost or mixed:
        raise Exit(code=rc or 1)


def json_load(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def json_dumps(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
