"""bench: the benchmark of issues 6 and 14 (devtools/bench.py), the same as scripts/bench."""
from __future__ import annotations

from invoke import task


@task(help={"size": "full (1,000 credentials, 100 CSRs, 10, 50 and 200 hosts, 10,000 for memory) or tiny "
                    "(10 credentials, 2 hosts, one run: what the test suite runs)",
            "repeat": "runs per figure; the table shows the median (default 0: 5, or 1 with tiny)",
            "cases": "comma-separated subset of status,rotate,csr,deploy,memory (default: all)",
            "hosts": "host counts of the deploy cases, e.g. 10,50,200 (default: the size's)",
            "baselines": "what users would write instead, beside the toolkit: handwritten (deploy), lookup "
                         "(status), or none (default: both; built once into the bench's own venv)",
            "json": "also write every run's figures to this file as JSON",
            "markdown": "also write the tables as Markdown to this file",
            "plot": "also draw deploy seconds against hosts to this PNG file (matplotlib, the bench's venv)",
            "keep": "keep the work directory (logs, inventories) for inspection"})
def bench(c, size="full", repeat=0, cases=None, hosts=None, baselines=None, json=None, markdown=None, plot=None,
          keep=False):
    """Benchmark against its own OpenBao and SSH test hosts: one table of medians beside their baselines."""
    from .. import bench as benchmod
    argv = ["--size", size]
    if repeat:
        argv += ["--repeat", str(repeat)]
    for flag, value in (("--cases", cases), ("--hosts", hosts), ("--baselines", baselines), ("--json", json),
                        ("--markdown", markdown), ("--plot", plot)):
        if value:
            argv += [flag, value]
    if keep:
        argv.append("--keep")
    rc = benchmod.main(argv)
    if rc:
        from invoke.exceptions import Exit
        raise Exit(code=rc)
