"""The benchmark (scripts/bench, devtools/bench.py) at its tiny size, so that its code never rots.

It starts its own OpenBao and SSH test hosts, seeds Vault and runs every case once: 10 credentials,
10 CSRs, 2 hosts, with the users' baselines beside them (the hand-written deploy playbook, the status
lookup playbook: community `ansible` in the bench's own venv, built once under .state/bench-venv/ from
the package index, about 25 s), then writes its JSON, Markdown tables and plot. Only the shape and
sanity of the figures are checked here, never their speed: the targets are judged by the full-size run
(`scripts/bench`), not by the test suite.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = ["status-10", "rotate-noop-10", "csr-10", "csr-10-1core", "deploy-noop-2", "deploy-change-2", "status-20",
         "memory-20"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the benchmark's SSH test hosts need root")
    d = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "ANSIBLE_"))}
    p = subprocess.run([sys.executable, "-m", "devtools.bench", "--size", "tiny", "--json", str(d / "bench.json"),
                        "--markdown", str(d / "bench.md"), "--plot", str(d / "hosts.png")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout, json.loads((d / "bench.json").read_text()), d


def test_the_table_has_every_case_with_its_baseline(tiny):
    table, data, _ = tiny
    lines = table.splitlines()
    assert lines[0].startswith("partnercerts benchmark, size tiny") and f"{data['cores']} cores" in lines[0]
    assert lines[1].split()[:7] == ["case", "median", "baseline", "ratio", "alternative", "alt", "ratio"]
    rows = lines[3:3 + len(CASES)]
    assert [line.split()[0] for line in rows] == CASES
    legend = lines[4 + len(CASES):4 + 2 * len(CASES)]  # then one line per case: what, and against what
    assert [line.split()[0] for line in legend] == CASES
    assert all("baseline:" in line for line in legend if not line.startswith(("memory", "status-20")))
    assert [r["case"] for r in data["rows"]] == CASES


def test_every_figure_is_a_sane_number(tiny):
    _, data, _ = tiny
    assert data["repeat"] == 1 and data["cores"] >= 1
    assert data["index_layout"] == 2  # what a Vault after its first rotator run holds, not the legacy layout
    rows = {r["case"]: r for r in data["rows"]}
    for name, r in rows.items():
        assert len(r["runs"]) == 1 and all(math.isfinite(x) and x > 0 for x in r["runs"]), name
        if name.startswith("memory"):
            assert r["unit"] == "MB" and 10 < r["figure"] < 2000 and r["baseline"] is None
            continue
        assert r["unit"] == "s" and 0 < r["figure"] < 600, name
        if name == "status-20":  # the memory runs' wall time: ms per credential, no baseline
            assert r["baseline"] is None and r["per_unit"] == "ms/cred" and r["target"] == "<=0.1 ms/cred"
            continue
        assert r["baseline"] is not None and 0 < r["baseline"] < 600, name
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, name
    for name in ("status-10", "rotate-noop-10", "csr-10", "csr-10-1core"):
        assert rows[name]["per"] > 0 and rows[name]["per_unit"] == "ms/cred"
    assert "cores busy" in rows["csr-10"]["extra"]


def test_the_users_baselines_are_measured_beside_the_toolkit(tiny):
    _, data, _ = tiny
    assert data["hosts"] == [2] and data["baselines"] == ["handwritten", "lookup"]
    rows = {r["case"]: r for r in data["rows"]}
    for name in ("status-10", "deploy-noop-2", "deploy-change-2"):
        r = rows[name]
        assert len(r["alt_runs"]) == 1 and 0 < r["alt"] < 600, name
        assert math.isclose(r["alt_ratio"], r["alt"] / r["figure"]), name
        assert r["alt_what"] and r["alt_target"].endswith("x faster"), name
    assert "vault_kv2_get" in rows["status-10"]["alt_what"] and "hand-written" in rows["deploy-noop-2"]["alt_what"]
    for name in ("deploy-noop-2", "deploy-change-2"):
        assert rows[name]["per_unit"] == "ms/host" and math.isclose(rows[name]["per"], rows[name]["figure"] * 500)
    for name in ("rotate-noop-10", "csr-10", "status-20", "memory-20"):
        assert rows[name]["alt"] is None and rows[name]["alt_ratio"] is None, name


def test_the_scale_table_the_markdown_and_the_plot(tiny):
    table, data, d = tiny
    rows = {r["case"]: r for r in data["rows"]}
    lines = table.splitlines()
    at = lines.index("deploy by host count (median; ms/host = seconds / hosts):")
    assert lines[at + 1].split()[:3] == ["hosts", "deploy", "noop"]
    cells = [c.strip() for c in lines[at + 3].split("  ") if c.strip()]
    noop = rows["deploy-noop-2"]
    assert cells[0] == "2" and cells[1] == f"{noop['figure']:.2f} s, {noop['figure'] * 500:.0f} ms/host"
    assert cells[6] == f"{noop['alt_ratio']:.1f}x faster"
    md = (d / "bench.md").read_text()
    assert md.startswith("partnercerts benchmark, size tiny")
    assert "| case | median | baseline | ratio | alternative | alt ratio |" in md
    assert f"| deploy-noop-2 | {noop['figure']:.2f} s |" in md and "| hosts | deploy noop |" in md
    assert all(f"- `{r['case']}`: " in md for r in data["rows"])
    png = (d / "hosts.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and 5_000 < len(png) < 500_000
