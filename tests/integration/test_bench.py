"""The benchmark (scripts/bench, devtools/bench.py) at its tiny size, so that its code never rots.

It starts its own OpenBao and SSH test hosts, seeds Vault and runs every case once: 10 credentials,
10 CSRs, 2 hosts. Only the shape and sanity of the figures are checked here, never their speed:
the targets are judged by the full-size run (`scripts/bench`), not by the test suite.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = ["status-10", "rotate-noop-10", "csr-10", "csr-10-1core", "deploy-noop-2", "deploy-change-2", "memory-20"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the benchmark's SSH test hosts need root")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "ANSIBLE_"))}
    p = subprocess.run([sys.executable, "-m", "devtools.bench", "--size", "tiny", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout, json.loads(out.read_text())


def test_the_table_has_every_case_with_its_baseline(tiny):
    table, data = tiny
    lines = table.splitlines()
    assert lines[0].startswith("partnercerts benchmark, size tiny") and f"{data['cores']} cores" in lines[0]
    assert lines[1].split()[:4] == ["case", "median", "baseline", "ratio"]
    rows = lines[3:3 + len(CASES)]
    assert [line.split()[0] for line in rows] == CASES
    legend = lines[4 + len(CASES):4 + 2 * len(CASES)]  # then one line per case: what, and against what
    assert [line.split()[0] for line in legend] == CASES
    assert all("baseline:" in line for line in legend if not line.startswith("memory"))
    assert [r["case"] for r in data["rows"]] == CASES


def test_every_figure_is_a_sane_number(tiny):
    _, data = tiny
    assert data["repeat"] == 1 and data["cores"] >= 1
    rows = {r["case"]: r for r in data["rows"]}
    for name, r in rows.items():
        assert len(r["runs"]) == 1 and all(math.isfinite(x) and x > 0 for x in r["runs"]), name
        if name.startswith("memory"):
            assert r["unit"] == "MB" and 10 < r["figure"] < 2000 and r["baseline"] is None
            continue
        assert r["unit"] == "s" and 0 < r["figure"] < 600, name
        assert r["baseline"] is not None and 0 < r["baseline"] < 600, name
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, name
    for name in ("status-10", "rotate-noop-10", "csr-10", "csr-10-1core"):
        assert rows[name]["per"] > 0 and rows[name]["per_unit"] == "ms/cred"
    assert "cores busy" in rows["csr-10"]["extra"]
