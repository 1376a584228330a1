"""The installable package: a wheel built from this checkout, installed in a fresh venv, runs from any directory.

The wheel is built from a clean copy of the checkout (a stale build/ could hide a file that is no longer
packaged) without build isolation, and installed with --no-deps into a venv made without pip; the venv
finds the pinned dependencies through a .pth line naming this interpreter's site-packages, so the test is
offline and takes seconds. The editable install of the checkout lives there too, but only as .pth files,
which a path added by a .pth line does not run: `import partnercerts` in the venv is the wheel's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

SKIP = shutil.ignore_patterns(".git", ".venv", ".venv-sanity", ".collections", ".state", "build", "*.egg-info",
                              "__pycache__", ".hypothesis",
                              ".pytest_cache", ".ruff_cache", ".mypy_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (built,) = (tmp / "dist").glob("partnercerts-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--disable-pip-version-check", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_partnercerts_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.fixture
def run(venv, tmp_path):
    """Run the installed `partnercerts` from a directory that is not the checkout, without its environment."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "PYTHON"))}
    base.update(HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "xdg-state"))

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "partnercerts"), *args], cwd=elsewhere, env={**base, **env},
                              capture_output=True, text=True, timeout=120)
    return run


def test_the_wheel_holds_the_product_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"partnercerts", "partnercerts-0.1.0.dist-info"}, tops
    assert "partnercerts/py.typed" in names
    assert {f"partnercerts/policies/{r}.hcl" for r in ("rotator", "deployer", "auditor")} <= set(names)
    assert {"partnercerts/sandbox/authority.py", "partnercerts/sandbox/api.py", "partnercerts/cli.py"} <= set(names)
    for dev in ("bench", "devservers", "testhosts", "tests/", "devtools/", "tasks/dev.py", "tasks/chaos.py",
                "tasks/bench.py", "playbooks/", "plugins/"):
        assert not [n for n in names if dev in n], f"{dev} is in the wheel"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text and "Provides-Extra: test" in text and "Provides-Extra: dev" in text
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "partnercerts = partnercerts.cli:main" in entry


def test_partnercerts_lists_the_product_tasks_from_anywhere(run, venv):
    r = run("--list")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert {"status", "rotate", "csr", "import-cert", "deploy", "vault.up", "vault.bootstrap", "sandbox.up"} <= listed
    assert not {"test", "chaos", "bench"} & listed  # development tasks need a checkout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import partnercerts; print(partnercerts.__file__)"],
                           cwd=venv, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout's
    assert run("--version").stdout.strip() == "partnercerts 0.1.0"


def test_partnercerts_status_against_a_real_vault(run, bao, mount, inventory, tmp_path):
    r = run("status", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, PARTNERCERTS_KV_MOUNT=mount,
            PARTNERCERTS_INVENTORY=str(inventory))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MZP654321" in r.stdout and "fleet" in r.stdout and "big" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr and bao.token not in r.stdout + r.stderr


def test_installed_without_an_inventory_or_a_checkout_says_what_to_do(run, bao, mount):
    r = run("status", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, PARTNERCERTS_KV_MOUNT=mount)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "PARTNERCERTS_INVENTORY" in r.stderr
    r = run("deploy", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, PARTNERCERTS_KV_MOUNT=mount)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "checkout" in r.stderr and "partnercerts.psa.deploy" in r.stderr
