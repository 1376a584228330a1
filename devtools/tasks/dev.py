"""Developer tasks: the test suite."""
from __future__ import annotations

import shlex
import sys

from invoke import task

from .. import ROOT


@task(help={"k": "only tests matching this pytest -k expression",
            "path": "a test file or directory (default: tests)"})
def test(c, k=None, path="tests"):
    """Run the whole test suite against real OpenBao servers (and SSH hosts) started by its fixtures."""
    deps = ROOT / "scripts" / "install-system-deps"
    if deps.exists():
        c.run(shlex.quote(str(deps)), echo=True)
    args = [sys.executable, "-m", "pytest", path, "-ra"]
    if k:
        args += ["-k", k]
    with c.cd(str(ROOT)):
        c.run(" ".join(shlex.quote(a) for a in args), echo=True, pty=False)
