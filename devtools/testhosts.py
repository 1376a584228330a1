#!/usr/bin/env python3
"""Real SSH integration hosts: one sshd per host, each in its own network and mount namespace.

Layout of one instance (id = 7 hex digits derived from the state directory):

    root namespace                         per host (netns pcn<id>-<i>)
    bridge pcb<id> 10.231.N.1/24  <--veth pcv<id>-<i>-->  eth0 10.231.N.<i+1>/24
                                                          private mount namespace, tmpfs on /srv
                                                          sshd listening on <address>:22

Each host also has its own UTS namespace (hostname = host name) and a "holder" process
(``sleep infinity``) that owns its namespaces, so stopping and restarting a host's sshd keeps
its /srv. Everything outside /srv is the control node's own filesystem, shared by all hosts.
The hosts have no default route, so the only addresses they can reach are the bridge and each
other.

Needs root, /usr/sbin/sshd, ssh, ssh-keygen, ip, unshare, nsenter, mount
(``scripts/install-system-deps`` installs them). Standard library only.

Lifetime: an instance made with cleanup_at_exit=True (the default) belongs to its process: it is
torn down at exit and on SIGTERM, and if that process dies anyway (SIGKILL), the next up() on the
machine sweeps it. Instances started by the CLI outlive it until ``down``. Killed processes that
are no longer our children are reaped by init; on this VM's init that takes up to ~2 s, during
which they show as zombies.

CLI: ``testhosts.py up --count 3 --state DIR`` (leaves the hosts running and writes
DIR/inventory.yml), ``testhosts.py status --state DIR``, ``testhosts.py down --state DIR``,
``testhosts.py down --all`` (every instance on the machine).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SUPERNET = ipaddress.ip_network("10.231.0.0/16")
ALLOC_LOCK = Path("/run/lock/partnercerts-testhosts.lock")
# One file per live instance (id -> state_dir, owner process), so that instances whose owner died
# without tearing down (SIGKILL, a CI timeout) are swept by the next up() or by `down --all`.
REGISTRY = Path("/run/partnercerts-testhosts")
PRIVSEP_DIR = Path("/run/sshd")
SRV = Path("/srv")
STATE_FILE = "state.json"
CLIENT_KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"
AUTHORIZED_KEYS = "authorized_keys"
INVENTORY = "inventory.yml"
# "cp-" + 40 hex of %C, plus the ".XXXXXXXXXXXXXXXX" suffix ssh adds while binding the socket;
# sun_path holds 108 bytes on Linux, 104 elsewhere.
CONTROL_NAME_LEN = len("/cp-") + 40 + 17
SOCKET_PATH_MAX = 104
MAX_HOSTS = 253


class TestHostsError(RuntimeError):
    """Raised when the hosts cannot be brought up or controlled."""

    __test__ = False  # not a pytest test class


@dataclasses.dataclass
class Host:
    """One integration host; ``pid`` is its sshd (None while stopped)."""

    name: str
    address: str
    netns: str
    veth: str
    pid: int | None = None
    holder_pid: int | None = None
    _holder: subprocess.Popen | None = dataclasses.field(default=None, repr=False, compare=False)
    _sshd: subprocess.Popen | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        """Return the persistent fields as a JSON-ready dict."""
        return {k: getattr(self, k) for k in ("name", "address", "netns", "veth", "pid", "holder_pid")}


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command quietly, raising TestHostsError with its stderr when check fails."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise TestHostsError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip_batch(lines: Iterable[str], *, force: bool = False) -> None:
    """Run many ip(8) commands in one process; with force, keep going past errors."""
    text = "".join(line + "\n" for line in lines)
    if text:
        _run(["ip", "-force", "-batch", "-"] if force else ["ip", "-batch", "-"], input=text, check=not force)


def _proc_state(pid: int) -> str | None:
    """Return the /proc state letter of pid, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int | None) -> bool:
    """Tell whether pid is a running (not zombie) process."""
    return pid is not None and _proc_state(pid) not in (None, "Z", "X")


def _cmdline(pid: int) -> bytes:
    """Return the raw command line of pid (empty if unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _kill(pids: Iterable[int], popens: Iterable[subprocess.Popen] = (), grace: float = 2.0) -> None:
    """SIGTERM pids, SIGKILL whatever survives the grace period, and reap our own children."""
    pids = {p for p in pids if p and p != os.getpid()}
    popens = [p for p in popens if p is not None]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for p in popens:
            p.poll()
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for p in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _netns_pids(netns: str) -> set[int]:
    """Return the pids of every process in the named network namespace."""
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return {int(x) for x in proc.stdout.split()} if proc.returncode == 0 else set()


def _start_time(pid: int) -> int | None:
    """Return the kernel start time of pid (to tell a live owner from a reused pid)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _short_id(state_dir: Path) -> str:
    """Derive the 7-hex-digit id that names this instance's interfaces and namespaces."""
    return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:7]


def _log_tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _yaml_key(key: str) -> str:
    """Render a mapping key as YAML: plain when safe, else JSON-quoted (JSON scalars are YAML)."""
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) else json.dumps(key)


class TestHosts:
    """A set of SSH hosts in network+mount namespaces on one bridge; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, state_dir: Path, count: int, name_prefix: str = "pchost", srv_size: str = "64m",
                 *, start_timeout: float = 30.0, cleanup_at_exit: bool = True):
        """Describe the hosts; nothing is created until up()."""
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"count must be 1..{MAX_HOSTS}")
        self.state_dir = Path(state_dir).absolute()
        if re.search(r"\s", str(self.state_dir)):
            raise ValueError("state_dir must not contain whitespace (ssh and sshd options split on it)")
        self.count = count
        self.name_prefix = name_prefix
        self.srv_size = srv_size
        self.start_timeout = start_timeout
        self.cleanup_at_exit = cleanup_at_exit
        self.id = _short_id(self.state_dir)
        self.bridge = f"pcb{self.id}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: list[Host] = []
        self.control_dir = self._choose_control_dir()

    # ---- paths -------------------------------------------------------------------------------

    def _choose_control_dir(self) -> Path:
        """Use state_dir for ControlPath sockets unless that path would be too long for a socket."""
        if len(str(self.state_dir)) + CONTROL_NAME_LEN <= SOCKET_PATH_MAX:
            return self.state_dir
        return Path(f"/tmp/pccp-{self.id}")

    @property
    def client_key(self) -> Path:
        """Private key the clients log in with (as root)."""
        return self.state_dir / CLIENT_KEY

    @property
    def known_hosts(self) -> Path:
        """known_hosts file holding every host's key under its address."""
        return self.state_dir / KNOWN_HOSTS

    @property
    def control_path(self) -> str:
        """ssh ControlPath template (with %C) shared by ssh_command and the inventory."""
        return f"{self.control_dir}/cp-%C"

    def _host_file(self, host: Host | str, suffix: str) -> Path:
        """Path of a per-host state file."""
        name = host if isinstance(host, str) else host.name
        return self.state_dir / f"{name}.{suffix}"

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "TestHosts":
        """Bring the hosts up."""
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        """Tear everything down."""
        self.down()

    def up(self) -> "TestHosts":
        """Create bridge, namespaces, keys and sshd processes; return when every sshd accepts TCP."""
        if os.geteuid() != 0:
            raise TestHostsError("TestHosts needs root (network namespaces, mounts)")
        for tool in (SSHD, "ssh", "ssh-keygen", "ip", "unshare", "nsenter", "mount"):
            if not shutil.which(tool):
                raise TestHostsError(f"{tool} not found; run scripts/install-system-deps")
        sweep()
        self._cleanup_stale()
        self._register()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _register(self) -> None:
        """Record this instance machine-wide; owned ones are also torn down at exit and on SIGTERM."""
        REGISTRY.mkdir(mode=0o755, exist_ok=True)
        owner = os.getpid() if self.cleanup_at_exit else None
        entry = {"state_dir": str(self.state_dir), "owner_pid": owner,
                 "owner_start": _start_time(owner) if owner else None}
        (REGISTRY / f"{self.id}.json").write_text(json.dumps(entry) + "\n")
        if self.cleanup_at_exit:
            _LIVE.add(self)
            _install_exit_handlers()

    def _up(self) -> None:
        """The body of up(); any exception leaves cleanup to the caller."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        SRV.mkdir(mode=0o755, exist_ok=True)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)

        width = max(2, len(str(self.count)))
        self._allocate_network()
        assert self.subnet is not None
        addresses = list(self.subnet.hosts())[1:]  # .1 is the bridge
        self.hosts = [
            Host(name=f"{self.name_prefix}{i:0{width}d}", address=str(addresses[i - 1]),
                 netns=f"pcn{self.id}-{i}", veth=f"pcv{self.id}-{i}")
            for i in range(1, self.count + 1)
        ]
        self._save_state()

        keygens = self._start_keygens()
        try:
            self._create_links()
            self._start_holders()
        except BaseException:
            for p in keygens:
                p.kill()
                p.wait()
            raise
        self._finish_keygens(keygens)
        self._write_ssh_files()
        for host in self.hosts:
            self._spawn_sshd(host)
        self._wait_listening(self.hosts)
        self._save_state()

    def _allocate_network(self) -> None:
        """Pick a free 10.231.N.0/24 and create the bridge on it, under a machine-wide lock."""
        ALLOC_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(ALLOC_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = self._used_networks()
            start = int(self.id, 16) % 254
            for k in range(254):
                candidate = ipaddress.ip_network(f"10.231.{(start + k) % 254 + 1}.0/24")
                if not any(candidate.overlaps(net) for net in used):
                    break
            else:
                raise TestHostsError("no free /24 left in 10.231.0.0/16")
            self.subnet = candidate
            _ip_batch([
                f"link add {self.bridge} type bridge",
                f"addr add {next(candidate.hosts())}/{candidate.prefixlen} dev {self.bridge}",
            ])

    @staticmethod
    def _used_networks() -> list[ipaddress.IPv4Network]:
        """Networks of the root namespace's IPv4 addresses and routes that touch 10.231.0.0/16."""
        nets = []
        for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            if "inet" in fields:
                nets.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
        for line in _run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
            # The destination is the first or (after a type such as "local") the second word.
            for word in line.split()[:2]:
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(word, strict=False))
                    break
        return [n for n in nets if n.overlaps(SUPERNET) and n.prefixlen > 0]

    def _create_links(self) -> None:
        """Create each host's netns and veth pair and plug the root ends into the bridge."""
        lines = []
        for h in self.hosts:
            lines += [f"netns add {h.netns}", f"link add {h.veth} type veth peer name eth0 netns {h.netns}"]
        _ip_batch(lines)
        # No IPv6 on our links: nothing but the namespaced IPv4 addresses should carry traffic.
        for ifname in [self.bridge] + [h.veth for h in self.hosts]:
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
        _ip_batch([f"link set {h.veth} master {self.bridge} up" for h in self.hosts]
                  + [f"link set {self.bridge} up"])

    def _start_keygens(self) -> list[subprocess.Popen]:
        """Start ssh-keygen for the client key and every host key, in parallel."""
        jobs = [(self.client_key, "testhosts-client")]
        jobs += [(self._host_file(h, "hostkey"), h.name) for h in self.hosts]
        procs = []
        for path, comment in jobs:
            for p in (path, path.with_name(path.name + ".pub")):
                p.unlink(missing_ok=True)
            procs.append(subprocess.Popen(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        return procs

    @staticmethod
    def _finish_keygens(procs: list[subprocess.Popen]) -> None:
        """Wait for the ssh-keygen processes and fail on any error."""
        for p in procs:
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise TestHostsError(f"ssh-keygen failed: {err.decode(errors='replace').strip()}")

    def _start_holders(self) -> None:
        """Start one holder per host: it configures the netns, mounts the private /srv and sleeps."""
        prefixlen = self.subnet.prefixlen
        for h in self.hosts:
            script = (
                "echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null; "
                f"hostname {shlex.quote(h.name)} && "
                f"ip link set lo up && ip addr add {h.address}/{prefixlen} dev eth0 && ip link set eth0 up && "
                f"mount -t tmpfs -o size={shlex.quote(self.srv_size)},mode=0755 tmpfs {SRV} && "
                "echo ready && exec sleep infinity >/dev/null"
            )
            with open(self._host_file(h, "host.log"), "ab") as log:
                h._holder = subprocess.Popen(
                    ["ip", "netns", "exec", h.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                     "sh", "-c", script],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
            h.holder_pid = h._holder.pid
        self._save_state()

        # Each holder prints "ready" once its namespace is set up; wait for all of them at once.
        sel = selectors.DefaultSelector()
        buffers = {}
        for h in self.hosts:
            sel.register(h._holder.stdout, selectors.EVENT_READ, h)
            buffers[h.name] = b""
        deadline = time.monotonic() + self.start_timeout
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TestHostsError("timed out waiting for the host namespaces")
                for key, _ in sel.select(remaining):
                    h = key.data
                    chunk = os.read(key.fd, 64)
                    buffers[h.name] += chunk
                    if b"ready" in buffers[h.name]:
                        sel.unregister(key.fileobj)
                    elif not chunk:
                        raise TestHostsError(f"{h.name}: namespace setup failed:\n"
                                             f"{_log_tail(self._host_file(h, 'host.log'))}")
        finally:
            sel.close()
            for h in self.hosts:
                h._holder.stdout.close()

    def _write_ssh_files(self) -> None:
        """Write authorized_keys, known_hosts and one sshd_config per host."""
        pub = self.client_key.with_name(CLIENT_KEY + ".pub").read_text()
        self.state_dir.joinpath(AUTHORIZED_KEYS).write_text(pub)
        known = []
        for h in self.hosts:
            keytype, key = self._host_file(h, "hostkey.pub").read_text().split()[:2]
            known.append(f"{h.address} {keytype} {key}\n")
        self.known_hosts.write_text("".join(known))
        extra = ["PerSourcePenalties no"] if self._sshd_has_penalties() else []
        for h in self.hosts:
            self._host_file(h, "sshd_config").write_text("\n".join([
                f"ListenAddress {h.address}",
                "Port 22",
                "AddressFamily inet",
                f"HostKey {self._host_file(h, 'hostkey')}",
                f"PidFile {self._host_file(h, 'sshd.pid')}",
                f"AuthorizedKeysFile {self.state_dir / AUTHORIZED_KEYS}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "Subsystem sftp internal-sftp",
                "MaxStartups 200",
                "MaxSessions 64",
                *extra,
            ]) + "\n")

    def _sshd_has_penalties(self) -> bool:
        """Tell whether this sshd knows PerSourcePenalties (OpenSSH >= 9.8), which must be off here."""
        # Penalties would throttle the control node after the TCP readiness probes and stopped hosts.
        probe = self.state_dir / "penalties-probe.sshd_config"
        probe.write_text(f"PerSourcePenalties no\nHostKey {self._host_file(self.hosts[0], 'hostkey')}\n")
        try:
            return _run([SSHD, "-t", "-f", str(probe)], check=False).returncode == 0
        finally:
            probe.unlink(missing_ok=True)

    def _spawn_sshd(self, host: Host) -> None:
        """Start the host's sshd inside the holder's mount, network and UTS namespaces."""
        self._host_file(host, "sshd.pid").unlink(missing_ok=True)
        with open(self._host_file(host, "host.log"), "ab") as log:
            host._sshd = subprocess.Popen(
                ["nsenter", "-t", str(host.holder_pid), "-m", "-n", "-u",
                 SSHD, "-D", "-e", "-f", str(self._host_file(host, "sshd_config"))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        host.pid = host._sshd.pid  # nsenter execs sshd without forking

    def _wait_listening(self, hosts: Sequence[Host]) -> None:
        """Poll every host's port 22 until all accept TCP connections (bounded by start_timeout)."""
        pending = list(hosts)
        deadline = time.monotonic() + self.start_timeout
        while pending:
            for h in list(pending):
                if h._sshd is not None and h._sshd.poll() is not None:
                    raise TestHostsError(f"{h.name}: sshd exited ({h._sshd.returncode}):\n"
                                         f"{_log_tail(self._host_file(h, 'host.log'))}")
                try:
                    with socket.create_connection((h.address, 22), timeout=1):
                        pending.remove(h)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    raise TestHostsError(f"sshd not listening after {self.start_timeout}s on "
                                         + ", ".join(h.name for h in pending))
                time.sleep(0.01)

    # ---- state ------------------------------------------------------------------------------

    def _save_state(self) -> None:
        """Record what exists so that down() from another process can remove it."""
        if not self.state_dir.is_dir():
            return
        state = {
            "id": self.id, "count": self.count, "name_prefix": self.name_prefix, "srv_size": self.srv_size,
            "bridge": self.bridge, "subnet": str(self.subnet) if self.subnet else None,
            "control_dir": str(self.control_dir), "hosts": [h.to_json() for h in self.hosts],
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> "TestHosts":
        """Rebuild a TestHosts from state_dir/state.json (written by up() in any process)."""
        state_dir = Path(state_dir).absolute()
        state = json.loads((state_dir / STATE_FILE).read_text())
        self = cls(state_dir, max(1, state["count"]), state["name_prefix"], state["srv_size"],
                   cleanup_at_exit=False)
        self.subnet = ipaddress.ip_network(state["subnet"]) if state.get("subnet") else None
        self.control_dir = Path(state["control_dir"])
        self.hosts = [Host(**h) for h in state["hosts"]]
        return self

    # ---- teardown ---------------------------------------------------------------------------

    def down(self) -> None:
        """Remove ssh masters, processes, namespaces, links and state files; idempotent."""
        self._close_masters()
        self._kill_hosts(self._our_netns())
        self._delete_links()
        self._remove_files()
        (REGISTRY / f"{self.id}.json").unlink(missing_ok=True)
        _LIVE.discard(self)

    def _cleanup_stale(self) -> None:
        """Remove leftovers of an earlier run on the same state_dir (a crash, a forgotten down)."""
        if (self.state_dir / STATE_FILE).exists():
            with contextlib.suppress(Exception):
                TestHosts.load(self.state_dir).down()
        keep = self.hosts
        self.hosts = []
        self.down()
        self.hosts = keep

    def _our_netns(self) -> list[str]:
        """Names of existing network namespaces of this instance."""
        out = _run(["ip", "netns", "list"], check=False).stdout
        names = {line.split()[0] for line in out.splitlines() if line.strip()}
        return sorted(n for n in names if n.startswith(f"pcn{self.id}-"))

    def _master_pids(self) -> set[int]:
        """Pids of ssh clients (ControlPersist masters included) using our control directory."""
        needle = f"{self.control_dir}/cp-".encode()
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "ssh":
                    continue
            except OSError:
                continue
            if needle in _cmdline(int(entry.name)):
                pids.add(int(entry.name))
        return pids

    def _close_masters(self) -> None:
        """Ask each ControlPersist master to exit, then kill any ssh still using our control dir."""
        if self.control_dir.is_dir():
            quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            procs = [subprocess.Popen(["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                                      **quiet)
                     for sock in self.control_dir.glob("cp-*") if sock.is_socket()]
            for p in procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        _kill(self._master_pids())

    def _kill_hosts(self, netns_names: Iterable[str]) -> None:
        """Kill every process in our namespaces (and recorded sshd/holders still alive)."""
        pids: set[int] = set()
        for ns in netns_names:
            pids |= _netns_pids(ns)
        for h in self.hosts:
            # A recorded pid is only trusted while it is still one of ours (pids get reused).
            for pid in (h.pid, h.holder_pid):
                if pid and (pid in pids or str(self.state_dir).encode() in _cmdline(pid)):
                    pids.add(pid)
        _kill(pids, [p for h in self.hosts for p in (h._sshd, h._holder)])
        for h in self.hosts:
            h.pid = None
            h.holder_pid = None
            h._sshd = h._holder = None

    def _our_links(self) -> list[str]:
        """Names of this instance's interfaces (veths and bridge) in the root namespace."""
        out = _run(["ip", "-o", "link", "show"], check=False).stdout
        names = {parts[1].strip().split("@")[0] for parts in (line.split(":", 2) for line in out.splitlines())
                 if len(parts) > 1}
        return sorted(n for n in names if n.startswith((f"pcv{self.id}-", self.bridge)))

    def _delete_links(self) -> None:
        """Delete the network namespaces, then the veths they leave behind, then the bridge."""
        # Deleting each veth costs the kernel a grace period (~20 ms); destroying the namespaces
        # removes their veth pairs in one batch, so delete those first and wait for the veths to go.
        _ip_batch([f"netns del {ns}" for ns in self._our_netns()], force=True)
        deadline = time.monotonic() + 5
        while any(n != self.bridge for n in self._our_links()) and time.monotonic() < deadline:
            time.sleep(0.01)
        _ip_batch([f"link del {n}" for n in self._our_links()], force=True)

    def _remove_files(self) -> None:
        """Delete the files up() created (and the separate control dir, if any)."""
        if self.control_dir != self.state_dir:
            shutil.rmtree(self.control_dir, ignore_errors=True)
        if not self.state_dir.is_dir():
            return
        patterns = ["cp-*", "*.hostkey", "*.hostkey.pub", "*.sshd_config", "*.sshd.pid", "*.host.log",
                    CLIENT_KEY, CLIENT_KEY + ".pub", KNOWN_HOSTS, AUTHORIZED_KEYS, INVENTORY,
                    "penalties-probe.sshd_config", STATE_FILE + ".tmp", STATE_FILE]
        for pattern in patterns:
            for path in self.state_dir.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # only if empty: never remove files we did not create

    # ---- using the hosts --------------------------------------------------------------------

    def host(self, name: str | Host) -> Host:
        """Return the host called name."""
        if isinstance(name, Host):
            return name
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def ssh_options(self) -> list[str]:
        """ssh client options that trust exactly our host keys and share ControlPersist masters."""
        return [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ControlMaster=auto",
            "-o", "ControlPersist=60s",
            "-o", f"ControlPath={self.control_path}",
        ]

    def ssh_command(self, host: str | Host, cmd: str | Sequence[str], *, timeout: float = 60,
                    input: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd on host as root with the system ssh client; never raises on a non-zero exit."""
        h = self.host(host)
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = ["ssh", *self.ssh_options(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-i", str(self.client_key), "-l", "root", h.address, remote]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def run_in_host(self, host: str | Host, argv: Sequence[str], *, timeout: float = 60,
                    input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the host's namespaces (mount, net, uts), bypassing ssh; works while stopped."""
        h = self.host(host)
        if not _alive(h.holder_pid):
            raise TestHostsError(f"{h.name} has no namespace holder (hosts are down?)")
        return subprocess.run(["nsenter", "-t", str(h.holder_pid), "-m", "-n", "-u", "--", *argv], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def stop_host(self, name: str | Host, *, unreachable: bool = False) -> None:
        """Kill the host's sshd and its sessions; /srv survives. unreachable=True also unplugs its link."""
        h = self.host(name)
        _kill(_netns_pids(h.netns) - {h.holder_pid}, [h._sshd])
        h.pid, h._sshd = None, None
        if unreachable:
            _run(["ip", "link", "set", h.veth, "down"])
        self._save_state()

    def start_host(self, name: str | Host) -> None:
        """Restart a stopped host's sshd (same address, same /srv contents)."""
        h = self.host(name)
        if not _alive(h.holder_pid):
            raise TestHostsError(f"{h.name}: namespace holder is gone; recreate the hosts")
        if _alive(h.pid):
            return
        _run(["ip", "link", "set", h.veth, "up"])
        self._spawn_sshd(h)
        self._wait_listening([h])
        self._save_state()

    def inventory_text(self, group: str = "integration", extra_vars: dict | None = None,
                       remote_tmp: str | None = "/srv/.ansible/tmp") -> str:
        """Return a YAML inventory putting every host in group, with the ssh settings to reach them."""
        common = shlex.join(self.ssh_options())
        group_vars = {
            "ansible_user": "root",
            "ansible_port": 22,
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": common,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if remote_tmp:
            group_vars["ansible_remote_tmp"] = remote_tmp
        group_vars.update(extra_vars or {})
        lines = ["all:", "  children:", f"    {_yaml_key(group)}:", "      hosts:"]
        for h in self.hosts:
            lines += [f"        {_yaml_key(h.name)}:", f"          ansible_host: {json.dumps(h.address)}"]
        lines.append("      vars:")
        lines += [f"        {_yaml_key(k)}: {json.dumps(v)}" for k, v in group_vars.items()]
        return "\n".join(lines) + "\n"

    def write_inventory(self, path: Path | None = None, **kwargs) -> Path:
        """Write inventory_text(**kwargs) to path (default state_dir/inventory.yml) and return it."""
        path = Path(path) if path else self.state_dir / INVENTORY
        path.write_text(self.inventory_text(**kwargs))
        return path

    def status(self) -> list[dict]:
        """Report, per host, whether its sshd and holder run and whether port 22 answers."""
        rows = []
        for h in self.hosts:
            try:
                with socket.create_connection((h.address, 22), timeout=1):
                    listening = True
            except OSError:
                listening = False
            rows.append({**h.to_json(), "sshd_alive": _alive(h.pid), "holder_alive": _alive(h.holder_pid),
                         "listening": listening})
        return rows


_LIVE: set[TestHosts] = set()
_handlers_installed = False


def _down_live() -> None:
    """Tear down every instance this process still owns (atexit and SIGTERM)."""
    for hosts in list(_LIVE):
        with contextlib.suppress(Exception):
            hosts.down()


def _on_sigterm(signum, frame) -> None:
    """Tear down owned hosts, then die of SIGTERM as if no handler had been installed."""
    _down_live()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_exit_handlers() -> None:
    """Register the atexit hook and, if SIGTERM is still at its default, the SIGTERM handler."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_down_live)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def sweep(all_instances: bool = False) -> list[str]:
    """Tear down registered instances whose owner process is gone (or all); return their state dirs."""
    swept = []
    for entry_file in sorted(REGISTRY.glob("*.json")) if REGISTRY.is_dir() else []:
        try:
            entry = json.loads(entry_file.read_text())
        except (OSError, ValueError):
            entry_file.unlink(missing_ok=True)
            continue
        owner = entry.get("owner_pid")
        owner_alive = owner is not None and _start_time(owner) == entry.get("owner_start")
        if not all_instances and (owner is None or owner_alive):
            continue  # CLI-started instances have no owner: only an explicit down removes them
        state_dir = Path(entry["state_dir"])
        try:
            hosts = TestHosts.load(state_dir)
        except (OSError, ValueError, KeyError, TypeError):
            # state.json is gone (e.g. a deleted temp dir): the id still follows from the path.
            hosts = TestHosts(state_dir, 1, cleanup_at_exit=False)
        hosts.down()
        entry_file.unlink(missing_ok=True)
        swept.append(str(state_dir))
    return swept


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: up, down, status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start hosts and leave them running; writes STATE/inventory.yml")
    up.add_argument("--count", type=int, default=3)
    up.add_argument("--prefix", default="pchost")
    up.add_argument("--srv-size", default="64m")
    up.add_argument("--group", default="integration")
    down = sub.add_parser("down", help="tear down the hosts recorded in STATE (or left over there)")
    status = sub.add_parser("status", help="show whether each recorded host answers")
    for p in (up, status):
        p.add_argument("--state", type=Path, required=True, help="state directory")
    target = down.add_mutually_exclusive_group(required=True)
    target.add_argument("--state", type=Path, help="state directory")
    target.add_argument("--all", action="store_true", help="every instance on this machine, any owner")
    args = parser.parse_args(argv)
    return {"up": _cli_up, "down": _cli_down, "status": _cli_status}[args.command](args)


def _cli_up(args: argparse.Namespace) -> int:
    """Start hosts that outlive this process; print one line per host."""
    hosts = TestHosts(args.state, args.count, args.prefix, args.srv_size, cleanup_at_exit=False)
    started = time.monotonic()
    try:
        hosts.up()
    except TestHostsError as exc:
        print(f"testhosts: {exc}", file=sys.stderr)
        return 1
    inventory = hosts.write_inventory(group=args.group)
    for h in hosts.hosts:
        print(f"{h.name}\t{h.address}\t{h.netns}\tsshd={h.pid}")
    print(f"testhosts: {len(hosts.hosts)} hosts up in {time.monotonic() - started:.2f}s; "
          f"inventory {inventory}", file=sys.stderr)
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    """Print each recorded host's state; exit 3 if any does not answer."""
    if not (args.state / STATE_FILE).exists():
        print("testhosts: no hosts recorded", file=sys.stderr)
        return 1
    rows = TestHosts.load(args.state).status()
    for r in rows:
        print(f"{r['name']}\t{r['address']}\tsshd={'up' if r['sshd_alive'] else 'down'}\t"
              f"port22={'open' if r['listening'] else 'closed'}")
    return 0 if all(r["listening"] for r in rows) else 3


def _cli_down(args: argparse.Namespace) -> int:
    """Tear down the hosts of one state dir, or of every registered instance."""
    started = time.monotonic()
    if args.all:
        for state_dir in sweep(all_instances=True):
            print(f"testhosts: removed hosts of {state_dir}", file=sys.stderr)
        return 0
    # Without state.json, the id derived from the path still finds namespaces and links.
    if (args.state / STATE_FILE).exists():
        hosts = TestHosts.load(args.state)
    else:
        hosts = TestHosts(args.state, 1, cleanup_at_exit=False)
    hosts.down()
    print(f"testhosts: down in {time.monotonic() - started:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
