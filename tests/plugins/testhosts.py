"""pytest plugin: real SSH integration hosts (devtools/testhosts.py) as fixtures.

Fixtures:
    ssh_hosts            session: 3 running hosts (a TestHosts); always torn down at session end
    ssh_hosts_inventory  session: Path of an Ansible YAML inventory for ssh_hosts (group "integration")
    testhosts_factory    function: make(count=2, **kwargs) -> a running TestHosts, torn down after the test

Needs root (namespaces, mounts): skipped otherwise. Missing system tools fail the test with a hint
to run scripts/install-system-deps, so that a machine without them cannot pass silently.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from devtools import (
    ROOT,  # noqa: F401 (tests import ROOT from here)
    testhosts,
)

TestHosts = testhosts.TestHosts
TestHostsError = testhosts.TestHostsError


def require_testhosts_environment() -> None:
    """Skip unless root; fail if a tool the hosts need is missing."""
    if os.geteuid() != 0:
        pytest.skip("SSH integration hosts need root (network namespaces, mounts)")
    missing = [t for t in (testhosts.SSHD, "ssh", "ssh-keygen", "ip", "unshare", "nsenter", "mount")
               if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-system-deps (as root)")


def ansible_bin(name: str = "ansible") -> str:
    """Path of an Ansible command: next to this Python (the project's .venv) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found; create the venv with scripts/inv --list")
    return found


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory):
    """Three running SSH hosts for the whole session."""
    require_testhosts_environment()
    hosts = TestHosts(tmp_path_factory.mktemp("ssh_hosts"), 3)
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()


@pytest.fixture(scope="session")
def ssh_hosts_inventory(ssh_hosts, tmp_path_factory) -> Path:
    """An Ansible inventory file for ssh_hosts, hosts in group "integration"."""
    return ssh_hosts.write_inventory(tmp_path_factory.mktemp("ssh_hosts_inventory") / "hosts.yml")


@pytest.fixture
def testhosts_factory(tmp_path_factory):
    """Return make(count=2, **kwargs) that starts a fresh TestHosts; all are torn down afterwards."""
    require_testhosts_environment()
    made = []

    def make(count: int = 2, **kwargs):
        """Start count hosts (TestHosts keyword arguments pass through) and return them."""
        hosts = TestHosts(tmp_path_factory.mktemp("testhosts"), count, **kwargs)
        made.append(hosts)
        return hosts.up()

    yield make
    for hosts in reversed(made):
        hosts.down()
