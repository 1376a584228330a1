"""The SSH integration hosts themselves: reachable by Ansible, private /srv, clean teardown."""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.plugins.testhosts import ROOT, TestHosts, TestHostsError, ansible_bin, require_testhosts_environment


def ansible_ping(inventory: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run `ansible all -m ping` on inventory with host key checking forced on."""
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([ansible_bin(), "all", "-i", str(inventory), "-m", "ping"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def running(pid: int | None) -> bool:
    """True if pid exists and is not a zombie (init reaps orphans on its own schedule)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, TypeError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def running_with(needle: str) -> list[str]:
    """Command lines of running processes that mention needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and running(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def netns_names() -> set[str]:
    """Names of the network namespaces known to ip(8)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_names() -> set[str]:
    """Names of the root namespace's network interfaces."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()}


def assert_nothing_left(hosts: TestHosts, pids: list[int]) -> None:
    """No process, namespace, link, socket or state file of hosts remains."""
    assert [p for p in pids if running(p)] == []
    assert running_with(str(hosts.state_dir)) == []
    assert running_with(f"{hosts.control_dir}/cp-") == []
    assert not any(n.startswith(f"pcn{hosts.id}-") for n in netns_names())
    assert not any(n.startswith((f"pcv{hosts.id}-", f"pcb{hosts.id}")) for n in link_names())
    assert not list(hosts.control_dir.glob("cp-*"))
    assert not hosts.state_dir.exists() or list(hosts.state_dir.iterdir()) == []


def test_every_host_answers_ansible_ping(ssh_hosts, ssh_hosts_inventory, tmp_path):
    result = ansible_ping(ssh_hosts_inventory, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ssh_hosts.hosts:
        assert f"{host.name} | SUCCESS" in result.stdout
    assert result.stdout.count('"ping": "pong"') == len(ssh_hosts.hosts)


def test_each_host_has_its_own_name_address_and_no_route_out(ssh_hosts):
    addresses = [h.address for h in ssh_hosts.hosts]
    assert len(set(addresses)) == 3
    assert all(ipaddress.ip_address(a) in ssh_hosts.subnet for a in addresses)
    assert ssh_hosts.subnet.subnet_of(ipaddress.ip_network("10.231.0.0/16"))
    for host in ssh_hosts.hosts:
        seen = ssh_hosts.ssh_command(host, "hostname; ip -4 -o addr show dev eth0; ip -4 route show")
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.splitlines()[0] == host.name
        assert f"inet {host.address}/24" in seen.stdout
        assert "default" not in seen.stdout  # a host can reach the bridge and its peers, nothing else


def test_srv_is_private_to_each_host(ssh_hosts):
    a, b, c = ssh_hosts.hosts
    path = f"/srv/probe-{uuid.uuid4().hex}"
    written = ssh_hosts.ssh_command(a, f"echo {a.name} > {path}")
    assert written.returncode == 0, written.stderr

    assert ssh_hosts.ssh_command(a, ["cat", path]).stdout == f"{a.name}\n"
    assert ssh_hosts.run_in_host(a, ["cat", path]).stdout == f"{a.name}\n"
    for other in (b, c):
        assert ssh_hosts.ssh_command(other, ["test", "-e", path]).returncode == 1
        assert ssh_hosts.run_in_host(other, ["test", "-e", path]).returncode == 1
    assert not Path(path).exists()  # the control node's own /srv is untouched
    for host in ssh_hosts.hosts:
        assert ssh_hosts.run_in_host(host, ["findmnt", "-n", "-o", "FSTYPE", "/srv"]).stdout.strip() == "tmpfs"


def test_stopped_host_refuses_and_restarts_with_its_srv(testhosts_factory):
    hosts = testhosts_factory(2)
    a, b = hosts.hosts
    assert hosts.ssh_command(a, "echo kept > /srv/kept").returncode == 0

    hosts.stop_host(a.name)
    assert a.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((a.address, 22), timeout=5).close()
    assert hosts.ssh_command(a, "true").returncode == 255
    assert hosts.ssh_command(b, "true").returncode == 0
    assert hosts.run_in_host(a, ["cat", "/srv/kept"]).stdout == "kept\n"

    hosts.start_host(a.name)
    assert hosts.ssh_command(a, ["cat", "/srv/kept"]).stdout == "kept\n"

    hosts.stop_host(a.name, unreachable=True)
    with pytest.raises(OSError) as refused:
        socket.create_connection((a.address, 22), timeout=2).close()
    assert not isinstance(refused.value, ConnectionRefusedError)  # silence, not a reset
    hosts.start_host(a.name)
    assert hosts.ssh_command(a, "true").returncode == 0


def test_teardown_leaves_nothing_behind(testhosts_factory, tmp_path):
    hosts = testhosts_factory(2)
    result = ansible_ping(hosts.write_inventory(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    masters = [int(line.split(":")[0]) for line in running_with(f"{hosts.control_dir}/cp-")]
    assert masters, "ansible should have left ControlPersist masters"
    pids = [h.pid for h in hosts.hosts] + [h.holder_pid for h in hosts.hosts] + masters

    hosts.down()
    assert_nothing_left(hosts, pids)
    hosts.down()  # idempotent


def test_two_instances_coexist(ssh_hosts, testhosts_factory):
    other = testhosts_factory(2)
    assert other.subnet != ssh_hosts.subnet
    assert other.bridge != ssh_hosts.bridge
    assert not {h.netns for h in other.hosts} & {h.netns for h in ssh_hosts.hosts}
    assert all(other.ssh_command(h, "true").returncode == 0 for h in other.hosts)
    other.down()
    assert all(ssh_hosts.ssh_command(h, "true").returncode == 0 for h in ssh_hosts.hosts)


def test_failed_up_cleans_up_after_itself(tmp_path_factory):
    require_testhosts_environment()
    hosts = TestHosts(tmp_path_factory.mktemp("broken"), 2, srv_size="nonsense")
    with pytest.raises(TestHostsError, match="namespace setup failed"):
        hosts.up()
    assert_nothing_left(hosts, [])


def test_cli_up_status_down(tmp_path_factory):
    require_testhosts_environment()
    state = tmp_path_factory.mktemp("cli")
    hosts, pids = None, []

    def cli(*args: str) -> subprocess.CompletedProcess:
        """Run scripts/testhosts.py with args on this test's state dir."""
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "testhosts.py"), *args, "--state", str(state)],
                              capture_output=True, text=True, timeout=120)

    up = cli("up", "--count", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert (state / "inventory.yml").exists()
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        hosts = TestHosts.load(state)
        assert hosts.ssh_command(hosts.hosts[0], "true").returncode == 0
        pids = [h.pid for h in hosts.hosts] + [h.holder_pid for h in hosts.hosts]
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert_nothing_left(hosts or TestHosts(state, 2), pids)


OWNER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from devtools import testhosts
testhosts.TestHosts(sys.argv[2], 1).up()
print("up", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_hosts_of_a_killed_owner_do_not_outlive_it(sig, tmp_path_factory, testhosts_factory):
    require_testhosts_environment()
    state = tmp_path_factory.mktemp("owner")
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(ROOT), str(state)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "up\n"
        orphan = TestHosts.load(state)
        pids = [orphan.hosts[0].pid, orphan.hosts[0].holder_pid]
        owner.send_signal(sig)
        owner.wait(timeout=30)
    finally:
        owner.kill()
        owner.wait()
    if sig == signal.SIGKILL:
        assert running(pids[0]), "nothing could have cleaned up yet"
        testhosts_factory(1)  # the next up() sweeps instances whose owner is gone
    assert_nothing_left(orphan, pids)
