"""Faults in the middle of a deploy to three real SSH hosts (sshd in namespaces, tests/plugins/testhosts):
Vault sealed or unreachable while the hosts are being served, and a SIGKILL of the rotation's whole
process group (invoke, ansible-playbook, its workers and ssh clients) at chosen moments on the hosts.

After each fault every host must hold, in `current`, a complete release whose key matches its
certificate (read on the host with its own openssl), old or new; the next `rotate` must bring every
host to Vault's current certificate and record them all in sync."""
import datetime as dt
import queue
import subprocess
import threading
import time
import uuid

import pytest

from partnercerts import inventory as inventory_mod
from partnercerts.settings import Settings
from partnercerts.store import Store
from partnercerts.toolkit import Toolkit
from partnercerts.vault import connect
from tests.faults.conftest import MZP, clean_failure, finish, host_release, kill_group, make_world, new_mount, unseal
from tests.faults.proxy import VaultProxy

APP = "fleet"
ORDER = ["stage", "switch", "reload"]

# Polls the deploy directory on a host (inside its mount namespace) and prints what changes.
WATCH = r"""
import os, sys, time
d, reloads = sys.argv[1], sys.argv[2]
def link():
    try:
        return os.readlink(os.path.join(d, "current"))
    except OSError:
        return None
def staging():
    try:
        return any(n.startswith(".stage-") for n in os.listdir(os.path.join(d, "releases")))
    except OSError:
        return False
def size():
    try:
        return os.path.getsize(reloads)
    except OSError:
        return 0
cur, st, rl = link(), False, size()
print("ready", flush=True)
while True:
    s = staging()
    if s and not st:
        print("stage", flush=True)
    st = s
    c = link()
    if c != cur:
        print("switch", c, flush=True)
        cur = c
    r = size()
    if r != rl:
        print("reload", flush=True)
        rl = r
    time.sleep(0.004)
"""


class Fleet:
    def __init__(self, ssh_hosts, world, root, proxy, server):
        self.hosts, self.w, self.root, self.proxy, self.server = ssh_hosts, world, root, proxy, server
        self.names = [h.name for h in ssh_hosts.hosts]
        self.dest = f"{root}/{APP}"

    def creds(self) -> Toolkit:
        env = self.w.env()
        settings = Settings.from_env(env)
        return Toolkit(settings, inventory_mod.load(settings.inventory), Store(connect(settings, env), settings))

    def renew(self) -> str:
        """A new key and certificate in Vault (sandbox authority), hosts untouched; returns its serial."""
        creds = self.creds()
        now = dt.datetime.now(dt.timezone.utc)
        creds.pending.make_csr(MZP, APP, now, force=True)
        creds.submitter.submit(creds.inventory.partner(MZP), APP, now)
        return self.vault_serial()

    def vault_serial(self) -> str:
        return self.w.raw.read(f"{MZP}/apps/{APP}/current")["data"]["serial"]

    def in_sync(self) -> tuple[str, str]:
        custom = self.w.raw.index(f"{MZP}/apps/{APP}")
        return custom.get("hosts_in_sync", ""), custom.get("hosts_total", "")

    def releases(self):
        return [host_release(self.hosts, h, self.dest) for h in self.names]

    def served(self) -> dict:
        """Per host: (release in current, release the service was last reloaded on)."""
        out = {}
        for h in self.names:
            cur = self.hosts.run_in_host(h, ["readlink", f"{self.dest}/current"]).stdout.strip()
            lines = self.hosts.run_in_host(h, ["cat", f"{self.root}/reloads"]).stdout.split("\n")
            last = [line for line in lines if line.startswith("reload ")][-1:]
            out[h] = (cur, last[0].split(" ", 1)[1] if last else None)
        return out

    def watch(self):
        """One watcher per host; returns (events queue of (host, event), stop())."""
        events: queue.Queue = queue.Queue()
        procs = []

        def stop():
            for p in procs:
                p.kill()
                p.wait()
        try:
            for name in self.names:
                h = self.hosts.host(name)
                p = subprocess.Popen(["nsenter", "-t", str(h.holder_pid), "-m", "-n", "-u", "--", "python3", "-c",
                                      WATCH, self.dest, f"{self.root}/reloads"], stdout=subprocess.PIPE, text=True)
                procs.append(p)
                assert p.stdout.readline().strip() == "ready", f"the watcher on {name} did not start"
                threading.Thread(target=lambda n=name, s=p.stdout: [events.put((n, line.split()[0])) for line in s],
                                 daemon=True).start()
        except BaseException:
            stop()
            raise
        return events, stop


@pytest.fixture(scope="module")
def fleet(ssh_hosts, sealable, tmp_path_factory):
    proxy = VaultProxy(sealable.nodes[0].addr, sealable.token)
    root = f"/srv/f{uuid.uuid4().hex[:8]}"
    inv = ssh_hosts.inventory_text(extra_vars={"partnercerts_deploy_credentials": [{
        "mzp": MZP, "app": APP, "dest": f"{root}/{APP}",
        # The service's view: which release it was reloaded on (the last line is what it serves).
        "reload_command": f"echo \"reload $(readlink {root}/{APP}/current)\" >> {root}/reloads"}]})
    client = sealable.client()
    w = make_world(tmp_path_factory.mktemp("fleet"), proxy.addr, sealable.token, new_mount(client), client,
                   submission="sandbox", apps=((APP, "rsa2048"),), hosts_yml=inv)
    f = Fleet(ssh_hosts, w, root, proxy, sealable)
    try:
        first = w.cli()("rotate", ok=False)
        assert first.rc == 0, first.text
        assert {r.serial for r in f.releases()} == {f.vault_serial()}
        yield f
    finally:
        proxy.close()
        unseal(sealable)
        for name in f.names:
            if ssh_hosts.host(name).pid is None:
                ssh_hosts.start_host(name)
            ssh_hosts.run_in_host(name, ["rm", "-rf", root])


def check_hosts(fleet, allowed):
    """Hosts whose current is mixed or neither the old nor the new release."""
    bad = []
    for r in fleet.releases():
        if r.mixed or r.target is None or r.serial not in allowed:
            bad.append(r)
    return bad


def converge(fleet, record, outcome, mixed, problems=()):
    """The next `rotate`: every host on Vault's certificate, in sync, its service reloaded on it. The run
    is recorded (with the hosts found mixed after the fault) before anything is asserted."""
    nxt = fleet.w.cli()("rotate", ok=False)
    serial = fleet.vault_serial()
    on_hosts = [r.serial for r in fleet.releases()]
    served = fleet.served()
    stale = {h: s for h, s in served.items() if s[0] != s[1]}
    done = (nxt.rc == 0 and "holds the lock" not in nxt.out and on_hosts == [serial] * 3
            and fleet.in_sync() == ("3", "3"))
    record.run(outcome + (", next run converged" if done and not stale else
                          ", services NOT reloaded on current" if done else ", next run did NOT converge"),
               hosts_mixed=len(mixed), ok=done and not stale and not mixed and not problems)
    assert not problems, problems
    assert not mixed, f"hosts left mixed after the fault: {mixed}"
    assert done, f"hosts {on_hosts}, Vault {serial}, in sync {fleet.in_sync()}:\n{nxt.text}"
    assert not stale, (f"current switched but the service was never reloaded on it (host: (current, last reload)): "
                       f"{stale}; the run that switched died before its reload and the next run saw nothing to do")


@pytest.mark.parametrize("action", ["seal", "cut"])
def test_vault_lost_in_the_middle_of_a_deploy(fleet, action, chaos):
    record = chaos(f"vault {'sealed' if action == 'seal' else 'unreachable'}: during deploy (3 SSH hosts)")
    old, new = fleet.vault_serial(), fleet.renew()
    # The first host has read its release from Vault (the action plugin reads the MZP account last):
    # from then on Vault is sealed / gone for the other reads, the checks after the switch and the report.
    fleet.proxy.arm("GET", rf"/data/partnercerts/{MZP}/account$", nth=1, when="after", action=action)
    failed = finish(fleet.w.popen("rotate"))
    fired = fleet.proxy.fired.is_set()
    fleet.proxy.restore()
    unseal(fleet.server)
    mixed = check_hosts(fleet, {old, new})
    problems = [] if fired else ["the fault never fired"]
    if not clean_failure(failed):
        problems.append(f"not a clean failure ({failed.rc}): {failed.text[-1500:]}")
    converge(fleet, record, "failed cleanly, hosts old or new" if not problems else "did not fail cleanly",
             mixed, problems)


@pytest.mark.parametrize("moment", ORDER)
def test_sigkill_of_the_control_node_in_the_middle_of_a_deploy(fleet, moment, chaos):
    """Kill the whole `rotate` process group when the first host starts staging, switches, or reloads."""
    record = chaos(f"SIGKILL: during deploy, at the first host's {moment} (3 SSH hosts)")
    old, new = fleet.vault_serial(), fleet.renew()
    events, stop = fleet.watch()
    seen = []
    try:
        proc = fleet.w.popen("rotate")
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                host, event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            seen.append((host, event))
            if ORDER.index(event) >= ORDER.index(moment):  # that moment, or a later one if it was too quick to see
                break
        killed = proc.poll() is None
        kill_group(proc)
    finally:
        stop()
    time.sleep(1)  # a module already running on a host finishes (or not) on its own; then look
    mixed = check_hosts(fleet, {old, new})
    serials = sorted(r.serial or "-" for r in fleet.releases())
    problems = [] if killed else [f"the run ended before any host's {moment}: {seen}"]
    converge(fleet, record, f"killed at {moment} (hosts: {serials.count(new)} new, {serials.count(old)} old)",
             mixed, problems)
