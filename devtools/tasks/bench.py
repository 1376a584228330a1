"""bench: the benchmark of issue 6 (devtools/bench.py), the same as scripts/bench."""
from __future__ import annotations

from invoke import task


@task(help={"size": "full (1,000 credentials, 100 CSRs, 10 and 50 hosts, 10,000 for memory) or tiny "
                    "(10 credentials, 2 hosts, one run: what the test suite runs)",
            "repeat": "runs per figure; the table shows the median (default 0: 5, or 1 with tiny)",
            "cases": "comma-separated subset of status,rotate,csr,deploy,memory (default: all)",
            "json": "also write every run's figures to this file as JSON",
            "keep": "keep the work directory (logs, inventories) for inspection"})
def bench(c, size="full", repeat=0, cases=None, json=None, keep=False):
    """Benchmark against its own OpenBao and SSH test hosts: one table of medians beside their baselines."""
    from .. import bench as benchmod
    argv = ["--size", size]
    if repeat:
        argv += ["--repeat", str(repeat)]
    if cases:
        argv += ["--cases", cases]
    if json:
        argv += ["--json", json]
    if keep:
        argv.append("--keep")
    rc = benchmod.main(argv)
    if rc:
        from invoke.exceptions import Exit
        raise Exit(code=rc)
