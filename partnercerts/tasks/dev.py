"""Developer tasks: the test suite."""
from __future__ import annotations

import sys

from invoke import task

from ..settings import ROOT


@task(help={"k": "only tests matching this pytest -k expression", "path": "a test file or directory (default: tests)"})
def test(c, k=None, path="tests"):
    """Run the whole test suite against real OpenBao servers started by its fixtures."""
    args = [sys.executable, "-m", "pytest", path, "-ra"]
    if k:
        args += ["-k", k]
    c.run(" ".join(_quote(a) for a in args), pty=False, echo=True, cwd=str(ROOT))


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)
