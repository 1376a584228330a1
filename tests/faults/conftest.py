"""Fault tests: real OpenBao servers (a 3-node raft cluster, a sealable single node, the session dev
server), real `invoke rotate` processes killed with SIGKILL, real SSH hosts, and a proxy that places
a Vault fault on an exact request.

The `chaos` fixture records, per fault, how many fault runs were made, the outcome, the keys lost
(a CSR's key that left the control node but is not the key Vault ends up with, or a second key made
for one renewal) and the hosts left mixed (a `current` whose key does not match its certificate, or
an incomplete release). The table is printed at the end of the session (and written as JSON to
$PARTNERCERTS_CHAOS_REPORT when set: `scripts/inv chaos` prints it from there)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from partnercerts import keys
from tests.conftest import DEMO_PARTNER, ROOT, Cli, Raw, Result
from tests.faults.cluster import Cluster
from tests.faults.proxy import VaultProxy
from tests.pki import CA

MZP = "MZP654321"


# -- the report: tests/plugins/chaos.py (the `chaos` fixture, the table) ----------------------------
def pytest_collection_modifyitems(items):
    """Every test here is a fault test: `pytest -m fault` (scripts/inv chaos) selects them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fault)


@pytest.fixture(scope="session")
def ca(tmp_path_factory):
    """The authority's CA for outbox partners: the test signs the released CSRs with it (`ca.path`: its PEM)."""
    authority = CA("Fault test CA", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    authority.path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.path.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
    return authority


# -- servers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sealable(tmp_path_factory):
    """A single-node raft OpenBao (1 key share) that tests may seal and unseal."""
    cluster = Cluster(tmp_path_factory.mktemp("sealable"), size=1).up()
    try:
        yield cluster
    finally:
        cluster.down()


def unseal(cluster: Cluster) -> None:
    for node in cluster.nodes:
        if node.running and (node.health() or {}).get("sealed"):
            cluster.unseal(node)
    cluster.wait_leader()


@pytest.fixture
def proxies():
    """make(upstream, token) -> a VaultProxy; all are closed after the test."""
    made: list[VaultProxy] = []

    def make(upstream: str, token: str | None = None) -> VaultProxy:
        p = VaultProxy(upstream, token)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def new_mount(client: hvac.Client, wait_nodes=()) -> str:
    """A fresh KV v2 mount; with wait_nodes, wait until every standby serves it too."""
    name = "f" + uuid.uuid4().hex[:10]
    client.sys.enable_secrets_engine("kv", path=name, options={"version": "2"})
    for node in wait_nodes:
        deadline = time.monotonic() + 30
        while True:
            try:
                hvac.Client(url=node.addr, token=client.token, timeout=5).secrets.kv.v2.read_secret_version(
                    "probe", mount_point=name, raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:
                break  # the mount answers: the probe simply does not exist
            except Exception:  # noqa: BLE001 - a standby still loading the mount answers 400/5xx
                pass
            assert time.monotonic() < deadline, f"{node.name} never served mount {name}"
            time.sleep(0.1)
    return name


# -- a user's environment ------------------------------------------------------------------------
@dataclass
class World:
    """One partner's inventory, state and outbox under a directory, against one Vault and mount."""

    dir: Path
    vault_addr: str
    token: str
    mount: str
    raw: Raw
    extra_env: dict = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory"

    @property
    def outbox(self) -> Path:
        return self.dir / "outbox"

    def env(self) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "ANSIBLE_"))}
        e.update(VAULT_ADDR=self.vault_addr, VAULT_TOKEN=self.token, PARTNERCERTS_KV_MOUNT=self.mount,
                 PARTNERCERTS_INVENTORY=str(self.inventory), PARTNERCERTS_STATE_DIR=str(self.dir / "state"),
                 HOME=str(self.dir / "home"), PARTNERCERTS_VAULT_RETRY_SECONDS="0.3")
        e.update(self.extra_env)
        return e

    def cli(self) -> Cli:
        c = Cli(self.env(), self.dir)
        c.secrets.append(self.token)
        return c

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """The real command in a process group of its own (so a SIGKILL takes its children too)."""
        return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                                env={**self.env(), **(env or {})}, cwd=self.dir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


def make_world(base: Path, vault_addr: str, token: str, mount: str, raw_client: hvac.Client, *,
               submission="outbox", apps=(("fleet", "rsa2048"),), hosts_yml: str | None = None) -> World:
    base.mkdir(parents=True, exist_ok=True)
    w = World(base, vault_addr, token, mount, Raw(raw_client, mount))
    (w.inventory / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (w.dir / "home").mkdir(exist_ok=True)
    (w.inventory / "hosts.yml").write_text(hosts_yml or "all:\n  hosts: {}\n")
    doc = yaml.safe_load(DEMO_PARTNER)
    partner = doc["partnercerts_partners"][0]
    partner["applications"] = [{"name": n, "key": k} for n, k in apps]
    if submission == "outbox":
        partner["submission"] = {"method": "outbox", "dir": str(w.outbox), "to": "connectedcar@mpsa.example"}
    else:
        partner["submission"] = submission
    (w.inventory / "group_vars" / "all" / "partners.yml").write_text(yaml.safe_dump(doc, allow_unicode=True),
                                                                      encoding="utf-8")
    return w


def kill_group(proc: subprocess.Popen) -> Result:
    """SIGKILL the process and every child in its group (a control node losing power)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, err = proc.communicate(timeout=60)
    return Result(proc.returncode, out, err)


def finish(proc: subprocess.Popen, timeout: float = 300) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def clean_failure(r: Result) -> bool:
    """Non-zero, no traceback, and the last line is one `error: ...` line saying why."""
    lines = [line for line in r.err.splitlines() if line.strip()]
    return r.rc != 0 and "Traceback" not in r.text and bool(lines) and lines[-1].startswith("error: ")


# -- keys ---------------------------------------------------------------------------------------
def csr_key(pem: str | bytes) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return keys.spki_sha256(x509.load_pem_x509_csr(data).public_key())


def cert_key(pem: str | bytes) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return keys.spki_sha256(x509.load_pem_x509_certificates(data)[0].public_key())


def released_keys(outbox: Path, app: str) -> list[str]:
    """Keys of every CSR that left for the authority through the outbox (one per message folder)."""
    if not outbox.exists():
        return []
    return [csr_key(p.read_bytes()) for p in sorted(outbox.glob(f"{MZP}-{app}-*/{MZP}-{app}.csr"))]


def versions(raw: Raw, path: str) -> list[dict]:
    meta = raw.meta(path)
    if not meta:
        return []
    out = []
    for v in range(1, int(meta["current_version"]) + 1):
        rec = raw.read(path, version=v)
        if rec is not None:
            out.append(rec["data"])
    return out


@dataclass
class KeyAudit:
    pending: set            # keys in any version of the pending record (live or tombstone)
    current: str | None     # key of the current record
    history: set            # keys of history entries
    released: set           # keys of CSRs that left (outbox), or were signed (sandbox: = history)

    @property
    def all(self) -> set:
        return self.pending | self.released | ({self.current} if self.current else set())

    def lost(self) -> int:
        """Keys beyond the one key of this (single) renewal: a second key made for it, or a key whose CSR
        left for the authority but that Vault holds neither as pending nor as current."""
        extra = max(0, len(self.all) - 1)
        orphaned = len(self.released - self.pending - {self.current})
        return max(extra, orphaned)


def audit(w: World, app: str) -> KeyAudit:
    base = f"{MZP}/apps/{app}"
    pending = {d["key_sha256"] for d in versions(w.raw, f"{base}/pending") if d.get("key_sha256")}
    cur = w.raw.read(f"{base}/current")
    history = set()
    for serial in list_keys(w.raw, f"{base}/history"):
        rec = w.raw.read(f"{base}/history/{serial}")
        if rec:
            history.add(rec["data"]["key_sha256"])
    released = set(released_keys(w.outbox, app))
    return KeyAudit(pending, cur["data"]["key_sha256"] if cur else None, history, released)


def list_keys(raw: Raw, path: str) -> list[str]:
    try:
        return raw.c.secrets.kv.v2.list_secrets(f"{raw.prefix}/{path}", mount_point=raw.mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return []


def sign_pending(w: World, app: str, ca, tmp: Path) -> Path:
    """The authority's side: sign the CSR that was released (from the outbox), as a human would."""
    (csr_file,) = sorted(w.outbox.glob(f"{MZP}-{app}-*/{MZP}-{app}.csr"))[-1:]
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    cert = ca.issue(csr.public_key(), csr.subject, now=now, days=365, not_before=now - dt.timedelta(hours=1))
    out = tmp / f"{app}-{uuid.uuid4().hex[:6]}.crt"
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


# -- hosts --------------------------------------------------------------------------------------
@dataclass
class HostRelease:
    host: str
    target: str | None
    complete: bool
    matching: bool
    serial: str | None
    problems: list

    @property
    def mixed(self) -> bool:
        """A `current` a service could not use as one credential."""
        return self.target is not None and not (self.complete and self.matching)


HOST_CHECK = r"""
set -u
d="$1"
t=$(readlink "$d/current" 2>/dev/null) || { echo "target="; exit 0; }
echo "target=$t"
for f in client.crt client.key ca.crt client.p12 client.env; do
  [ -s "$d/current/$f" ] || echo "missing=$f"
done
c=$(openssl x509 -noout -pubkey -in "$d/current/client.crt" 2>/dev/null)
k=$(openssl pkey -pubout -in "$d/current/client.key" 2>/dev/null)
if [ -n "$c" ] && [ "$c" = "$k" ]; then echo "match=yes"; else echo "match=no"; fi
echo "serial=$(openssl x509 -noout -serial -in "$d/current/client.crt" 2>/dev/null | cut -d= -f2)"
"""


def host_release(ssh_hosts, host: str, dest: str) -> HostRelease:
    """What `current` holds on a host, read with the host's own openssl (never the code under test)."""
    p = ssh_hosts.run_in_host(host, ["sh", "-c", HOST_CHECK, "check", dest])
    facts: dict = {}
    missing = []
    for line in p.stdout.splitlines():
        k, _, v = line.partition("=")
        if k == "missing":
            missing.append(v)
        else:
            facts[k] = v
    target = facts.get("target") or None
    return HostRelease(host, target, complete=not missing, matching=facts.get("match") == "yes",
                       serial=facts.get("serial") or None, problems=missing)
