"""The fault report: the `chaos` fixture records, per fault, its runs, outcome, keys lost and hosts
left mixed; the table is printed at the end of the session (and written as JSON to
$PARTNERCERTS_CHAOS_REPORT when set: `scripts/inv chaos` prints it from there).

Tests marked `fault` (every test in tests/faults, and the host network and disk faults of
tests/integration/test_security.py) are the ones `scripts/inv chaos` runs."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.tasks.chaos import render_table

_ROWS: list[dict] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "fault: a fault test whose runs appear in the chaos report (scripts/inv chaos)")


# -- the report --------------------------------------------------------------------------------
@dataclass
class ChaosRecord:
    fault: str
    runs: int = 0
    keys_lost: int = 0
    hosts_mixed: int = 0
    outcomes: dict = field(default_factory=dict)   # outcome -> count, e.g. {"completed": 2, "failed cleanly": 1}
    verdicts: list = field(default_factory=list)   # per run, when the test judges runs one by one: True/False

    notes: list = field(default_factory=list)      # why runs judged not ok failed

    def run(self, outcome: str, keys_lost: int = 0, hosts_mixed: int = 0, ok: bool | None = None,
            note: str = "") -> None:
        """One fault run; `ok` judges this run on its own (a test with several faults in one row set),
        `note` says why it is not."""
        if note and ok is False:
            self.notes.append(" ".join(note.split())[:80])
        self.runs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.keys_lost += keys_lost
        self.hosts_mixed += hosts_mixed
        if ok is not None:
            self.verdicts.append(ok)

    def summary(self) -> str:
        return ", ".join(f"{n} {o}" for o, n in self.outcomes.items()) or "-"


@contextlib.contextmanager
def fault_run(record: ChaosRecord, measure_keys_lost):
    """Around one fault run whose success the body records itself: when the body fails, the run is
    still recorded, as failed and with the keys lost that `measure_keys_lost()` finds."""
    try:
        yield
    except BaseException:
        try:
            lost = measure_keys_lost()
        except Exception:  # noqa: BLE001 - the test's own failure is the one to report
            lost = 0
        record.run("FAILED", keys_lost=lost, ok=False)
        raise


@pytest.fixture
def chaos(request):
    """record = chaos("fault name"); record.run(outcome, keys_lost=..., hosts_mixed=...) per fault run."""
    made: list[ChaosRecord] = []

    def make(fault: str) -> ChaosRecord:
        rec = ChaosRecord(fault)
        made.append(rec)
        return rec

    yield make
    report = getattr(request.node, "rep_call", None)
    passed = report is not None and report.passed
    why = ""
    if report is not None and report.failed:
        text = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") else str(report.longrepr)
        why = " ".join(text.split())[:80]
    for rec in made or [ChaosRecord(request.node.name)]:
        # A row fails with its test, unless the test judged its runs one by one and these were all fine.
        good = passed or (rec.verdicts and all(rec.verdicts))
        _ROWS.append({"fault": rec.fault, "runs": rec.runs, "result": "pass" if good else "FAIL",
                      "outcome": rec.summary() if good else f"{rec.summary()}; {(rec.notes or [why])[0]}",
                      "keys_lost": rec.keys_lost, "hosts_mixed": rec.hosts_mixed, "test": request.node.nodeid})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    out = os.environ.get("PARTNERCERTS_CHAOS_REPORT")
    if out:
        Path(out).write_text(json.dumps(_ROWS, indent=2))
    if os.environ.get("PARTNERCERTS_CHAOS_QUIET"):
        return
    terminalreporter.write_sep("=", "partnercerts chaos report")
    for line in render_table(_ROWS).splitlines():
        terminalreporter.write_line(line)


