"""The time-travel soak: `scripts/inv soak` runs years of daily scheduled rotations against a simulated manual
authority, real servers and SSH test hosts (tests/soak/engine.py), and prints its table."""
from __future__ import annotations

import shlex
import sys

from invoke import task

from .. import ROOT


@task(help={"size": "full (3 simulated years, 20 credentials of 4 partners, 3 hosts + 1 added) or small "
                    "(150 days, 6 credentials, 2 hosts + 1: what scripts/inv test runs)",
            "days": "simulated days instead of the size's",
            "seed": "replay this seed (a failure prints its seed; default: a new one, printed)",
            "stop-after": "end after this simulated day (the same story: replay up to the day a failure names)",
            "json": "also write the table as JSON to this file"})
def soak(c, size="full", days=None, seed=None, stop_after=None, json=None):
    """Years of daily scheduled rotations in minutes, against a slow and forgetful simulated authority; its table."""
    deps = ROOT / "scripts" / "install-system-deps"
    if deps.exists():
        c.run(shlex.quote(str(deps)), echo=True)
    args = [sys.executable, "-m", "tests.soak.engine", "--size", size]
    for flag, value in (("--days", days), ("--seed", seed), ("--stop-after", stop_after), ("--json", json)):
        if value is not None:
            args += [flag, str(value)]
    with c.cd(str(ROOT)):
        c.run(" ".join(shlex.quote(a) for a in args), echo=True, pty=False)
