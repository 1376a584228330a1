"""`status`'s output, apart from Invoke: the task and the quick entry (partnercerts.quick) both print it."""
from __future__ import annotations

import json as jsonlib

from ._common import hinted, info, now, toolkit


def json_rows(rows: list[dict]) -> str:
    """A JSON array with one credential per line: what jq reads as before, what grep finds a credential in,
    and written by the C encoder (indent= goes through the pure-Python one: 0.1 s at 10,000 rows)."""
    if not rows:
        return "[]"
    return "[\n" + ",\n".join(jsonlib.dumps(r) for r in rows) + "\n]"


def show(json: bool = False, mzp: str | None = None, app: str | None = None) -> None:
    """One row per credential: state, serial, expiry, pending CSR (reads metadata only)."""
    rows = toolkit(light=True).planner.rows(now(), mzp, app)  # reads only: hvac only if the reader cannot serve
    if json:
        print(json_rows([r.as_json() for r in rows]))
        return
    header = ("mzp", "app", "client_id", "state", "serial", "not_after", "days_left", "pending_since", "csr",
              "hosts")
    table = [header] + [(r.mzp, r.app, r.client_id or "-", r.state, r.serial or "-", r.not_after or "-",
                         "-" if r.days_left is None else str(r.days_left), r.pending_since or "-", r.csr_stage(),
                         "-" if r.hosts_total is None else f"{r.hosts_in_sync}/{r.hosts_total}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r.notes:
            info(f"note: {r.key}: " + "; ".join(hinted(n.text, n.remedy, mzp=n.mzp, app=n.app) for n in r.notes))
