"""Security properties, each proven with real components (OpenBao, sshd hosts, openssl, the kernel's /proc):

- no secret in any process's arguments during a real rotate + deploy over SSH (AppRole login);
- files on hosts: the credential directory itself, every release and the files in it are closed to
  other users, whatever mode the directory had before;
- a host's credentials reach only that host;
- TLS to Vault is verified against VAULT_CACERT (wrong CA, wrong name, no CA file: one clear line);
- network faults (a host that times out, a host that drops mid-transfer) and a full disk on a host:
  the old release stays complete and current, the host is named in the report with the reason, and
  the next run converges.
"""
from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import subprocess
import threading
import time
import uuid

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from partnercerts.embedded import bao_binary
from tests.conftest import free_port
from tests.integration.test_deploy_ssh import service_user  # noqa: F401  (fixture)
from tests.pki import CA, key

MZP = "MZP654321"
CRED = {app: f"{MZP}/apps/{app}" for app in ("fleet", "big")}


# -- helpers ----------------------------------------------------------------------------------------


def inventory_for(hosts, per_host: dict[str, list[dict]], group_vars: dict | None = None,
                  ssh_extra: tuple[str, ...] = ()) -> str:
    """The hosts' inventory with credentials per host (host vars) and extra ssh client options."""
    doc = yaml.safe_load(hosts.inventory_text(extra_vars=group_vars))
    group = doc["all"]["children"]["integration"]
    for name, creds in per_host.items():
        group["hosts"][name]["partnercerts_deploy_credentials"] = creds
    if ssh_extra:
        group["vars"]["ansible_ssh_common_args"] += " " + " ".join(ssh_extra)
    return yaml.safe_dump(doc)


def serial_on(hosts, host: str, dest: str) -> str | None:
    p = hosts.run_in_host(host, ["openssl", "x509", "-noout", "-serial", "-in", f"{dest}/current/client.crt"])
    return p.stdout.strip().removeprefix("serial=") if p.returncode == 0 else None


def assert_release_intact(hosts, host: str, dest: str, serial: str) -> None:
    """current -> releases/<serial>, every file there, key matching certificate (checked with openssl on the host)."""
    assert hosts.run_in_host(host, ["readlink", f"{dest}/current"]).stdout.strip() == f"releases/{serial}"
    for name in ("client.crt", "client.key", "ca.crt", "client.p12", "client.env"):
        assert hosts.run_in_host(host, ["test", "-s", f"{dest}/current/{name}"]).returncode == 0, name
    cert_pub = hosts.run_in_host(host, ["openssl", "x509", "-noout", "-pubkey", "-in", f"{dest}/current/client.crt"])
    key_pub = hosts.run_in_host(host, ["openssl", "pkey", "-pubout", "-in", f"{dest}/current/client.key"])
    assert cert_pub.returncode == 0 and cert_pub.stdout == key_pub.stdout
    staged = hosts.run_in_host(host, ["find", f"{dest}/releases", "-maxdepth", "1", "-name", ".stage-*"]).stdout
    assert staged == "", f"half-staged release left on {host}: {staged}"


def mixed(hosts, host: str, dest: str, serial: str) -> int:
    """1 when the host's current is not a complete, matching release of `serial` (for the chaos report)."""
    try:
        assert_release_intact(hosts, host, dest, serial)
    except AssertionError:
        return 1
    return 0


def renew(cli, app: str = "fleet") -> None:
    """A new certificate for app in Vault (new key), hosts untouched."""
    cli("csr", "--mzp", MZP, "--app", app, "--force")
    cli("rotate", "--no-deploy")


def vault_serial(raw, app: str = "fleet") -> str:
    return raw.read(f"{CRED[app]}/current")["data"]["serial"]


def key_fragments(key_pem: str) -> list[str]:
    """Pieces of a private key as it could leak: its PEM body lines, and its base64 as the module receives it."""
    body = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    wire = base64.b64encode(key_pem.encode()).decode()
    return body[1:-1] + [wire[i:i + 48] for i in range(96, len(wire) - 48, 240)]


# -- no secret in process arguments -------------------------------------------------------------------


class CmdlineSampler(threading.Thread):
    """Reads /proc/*/cmdline of every process, over and over, until stopped; keeps each distinct one."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.seen: set[bytes] = set()
        self.sweeps = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            self.seen.add(fh.read())
                    except OSError:
                        pass
            self.sweeps += 1
            time.sleep(self.interval)

    def stop(self) -> list[str]:
        self._stop_event.set()
        self.join(timeout=10)
        return [c.replace(b"\0", b" ").decode("utf-8", "replace") for c in self.seen]


def test_no_secret_in_any_process_arguments_during_rotate_and_deploy(ssh_hosts, cli, raw, inventory, bao):
    """A scheduled-style run: AppRole login (rotator), rotate both credentials from nothing, deploy over SSH
    to three hosts, verify. Every process on the machine (control node and hosts share /proc) is sampled."""
    root = f"/srv/s{uuid.uuid4().hex[:8]}"
    creds = [{"mzp": MZP, "app": app, "dest": f"{root}/{app}"} for app in ("fleet", "big")]
    (inventory / "hosts.yml").write_text(inventory_for(ssh_hosts, {h.name: creds for h in ssh_hosts.hosts}))
    cli("vault.bootstrap")
    pairs = dict(line.split("=", 1) for line in cli("vault.secret-id", "--role", "rotator").out.splitlines())
    cli.secrets.append(pairs["VAULT_SECRET_ID"])
    sampler = CmdlineSampler()
    sampler.start()
    try:
        r = cli("rotate", env={"VAULT_TOKEN": "", **pairs})
    finally:
        cmdlines = sampler.stop()
    try:
        assert "deployed and verified" in r.out and sampler.sweeps > 50
        # The sampler saw the run itself: the playbook, ssh to the hosts, the module's python on the hosts.
        assert any("ansible-playbook" in c for c in cmdlines)
        assert any(c.startswith("ssh ") and ssh_hosts.hosts[0].address in c for c in cmdlines)
        assert any("/usr/bin/python3" in c for c in cmdlines)
        secrets = {"root token": bao.token, "secret ID": pairs["VAULT_SECRET_ID"],
                   "MZP password": raw.read(f"{MZP}/account")["data"]["password"]}
        for app in ("fleet", "big"):
            cur = raw.read(f"{CRED[app]}/current")["data"]
            secrets[f"{app} p12 password"] = cur["p12_password"]
            for i, piece in enumerate(key_fragments(cur["key_pem"])):
                secrets[f"{app} key piece {i}"] = piece
        # The test harness's own dev server carries its root token in its arguments (tests/conftest.py): not ours.
        cmdlines = [c for c in cmdlines if not (c.startswith(bao_binary()) and "-dev-root-token-id=" in c)]
        leaks = sorted({name for name, value in secrets.items() for c in cmdlines if value in c})
        assert not leaks, f"in process arguments: {leaks}"
        # No Vault token of any kind either (OpenBao service tokens start with s. or hvs.).
        assert not [c for c in cmdlines if re.search(r"(?<![\w.])(hvs|s)\.[A-Za-z0-9]{20,}", c)]
    finally:
        for h in ssh_hosts.hosts:
            ssh_hosts.run_in_host(h.name, ["rm", "-rf", root])


# -- files on hosts --------------------------------------------------------------------------------------


def test_the_credential_directory_and_every_release_are_closed_to_other_users(ssh_hosts, cli, raw, inventory,
                                                                              service_user):  # noqa: F811
    host = ssh_hosts.hosts[0].name
    root = f"/srv/m{uuid.uuid4().hex[:8]}"
    dest = f"{root}/fleet"
    # The directory exists already, open to everyone (as a careless mkdir would leave it).
    ssh_hosts.run_in_host(host, ["mkdir", "-p", "-m", "0777", dest])
    ssh_hosts.run_in_host(host, ["chmod", "0777", dest])
    (inventory / "hosts.yml").write_text(inventory_for(ssh_hosts, {host: [
        {"mzp": MZP, "app": "fleet", "dest": dest, "owner": service_user, "group": service_user}]}))

    def sh(*argv):
        return ssh_hosts.run_in_host(host, list(argv))
    try:
        cli("rotate")
        first = vault_serial(raw)
        renew(cli)
        cli("deploy")
        second = vault_serial(raw)
        assert first != second
        rows = sh("find", dest, "-printf", "%P\t%y %m %u %g\n").stdout.splitlines()
        entries = {(line.split("\t")[0] or "."): line.split("\t")[1].split() for line in rows}
        assert entries["."] == ["d", "750", service_user, service_user]  # the dest directory itself, tightened
        assert entries["releases"] == ["d", "750", service_user, service_user]
        for serial in (first, second):  # the older release as much as the current one
            assert entries[f"releases/{serial}"] == ["d", "750", service_user, service_user]
            for name, mode in (("client.key", "600"), ("client.p12", "600"), ("client.env", "600"),
                               ("client.crt", "644"), ("ca.crt", "644"), (".manifest.json", "640")):
                assert entries[f"releases/{serial}/{name}"] == ["f", mode, service_user, service_user], name
        for path, (kind, mode, *_) in entries.items():
            if kind == "d":
                assert int(mode, 8) & 0o007 == 0, f"{path} is open to others ({mode})"
        # Another local user can neither list the directory nor read anything in it; the service user can.
        for argv in (["ls", dest], ["cat", f"{dest}/current/client.key"], ["cat", f"{dest}/current/client.env"],
                     ["cat", f"{dest}/current/client.crt"]):
            denied = sh("runuser", "-u", "nobody", "--", *argv)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, argv
        assert sh("runuser", "-u", service_user, "--", "cat", f"{dest}/current/client.key").stdout == \
            raw.read(f"{CRED['fleet']}/current")["data"]["key_pem"]
    finally:
        sh("rm", "-rf", root)


# -- a host's credentials reach only that host ------------------------------------------------------


def test_a_hosts_credentials_reach_only_that_host(ssh_hosts, cli, raw, inventory):
    a, b, c = [h.name for h in ssh_hosts.hosts]
    root = f"/srv/i{uuid.uuid4().hex[:8]}"
    (inventory / "hosts.yml").write_text(inventory_for(ssh_hosts, {
        a: [{"mzp": MZP, "app": "fleet", "dest": f"{root}/fleet"}],
        b: [{"mzp": MZP, "app": "big", "dest": f"{root}/big"}],
        c: []}))
    try:
        r = cli("rotate")
        assert "deployed and verified" in r.out
        cur = {app: raw.read(f"{CRED[app]}/current")["data"] for app in ("fleet", "big")}
        own = {a: "fleet", b: "big"}
        for host, app in own.items():
            assert serial_on(ssh_hosts, host, f"{root}/{app}") == cur[app]["serial"]
        for host in (a, b, c):
            for app in ("fleet", "big"):
                if own.get(host) == app:
                    continue
                # Neither the key's PEM body nor its transfer encoding, nor its bundle password, anywhere in /srv.
                pieces = key_fragments(cur[app]["key_pem"]) + [cur[app]["p12_password"]]
                args = [x for p in pieces for x in ("-e", p)]
                found = ssh_hosts.run_in_host(host, ["grep", "-rlF", *args, "/srv"])
                assert found.stdout == "", f"{host} holds {app}'s secrets in {found.stdout}"
                assert ssh_hosts.run_in_host(host, ["test", "-e", f"{root}/{app}"]).returncode != 0
        # What each host's bundle holds is its own key (read with the host's own openssl and password).
        env = dict(line.split("=", 1) for line in ssh_hosts.run_in_host(
            b, ["cat", f"{root}/big/current/client.env"]).stdout.splitlines())
        p12 = ssh_hosts.run_in_host(b, ["openssl", "pkcs12", "-in", f"{root}/big/current/client.p12", "-nocerts",
                                        "-nodes", "-passin", f"pass:{env['PSA_P12_PASSWORD']}"])
        assert p12.returncode == 0
        body = cur["big"]["key_pem"].splitlines()[1]
        assert body in p12.stdout and cur["fleet"]["key_pem"].splitlines()[1] not in p12.stdout
        # Vault's host records: each credential lists its own host only.
        assert set(raw.read(f"{CRED['fleet']}/hosts")["data"]["hosts"]) == {a}
        assert set(raw.read(f"{CRED['big']}/hosts")["data"]["hosts"]) == {b}
    finally:
        for h in (a, b, c):
            ssh_hosts.run_in_host(h, ["rm", "-rf", root])


# -- TLS to Vault -------------------------------------------------------------------------------------


def server_cert(ca: CA, ip: str, now: dt.datetime):
    k = key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca.name).public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert, k


def pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_bao(tmp_path):
    """An OpenBao dev server with two extra TLS listeners on loopback: one with a certificate for 127.0.0.1
    from a test CA, one with a certificate for another name (127.0.0.2) from the same CA."""
    now = dt.datetime.now(dt.timezone.utc)
    ca = CA("Vault TLS Test CA", now=now)
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    (tmp_path / "other-ca.pem").write_bytes(pem(CA("Some Other CA", now=now).cert))
    ports = {"good": free_port(), "wrong_name": free_port()}
    listeners = []
    for name, ip in (("good", "127.0.0.1"), ("wrong_name", "127.0.0.2")):
        cert, k = server_cert(ca, ip, now)
        (tmp_path / f"{name}.crt").write_bytes(pem(cert))
        (tmp_path / f"{name}.key").write_bytes(pem(k))
        os.chmod(tmp_path / f"{name}.key", 0o600)
        listeners.append(f'listener "tcp" {{\n  address = "127.0.0.1:{ports[name]}"\n'
                         f'  tls_cert_file = "{tmp_path / f"{name}.crt"}"\n'
                         f'  tls_key_file = "{tmp_path / f"{name}.key"}"\n}}\n')
    (tmp_path / "tls.hcl").write_text("".join(listeners))
    token = "root-" + uuid.uuid4().hex
    log = open(tmp_path / "bao.log", "wb")
    proc = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-root-token-id={token}",
                             f"-dev-listen-address=127.0.0.1:{free_port()}", f"-config={tmp_path / 'tls.hcl'}"],
                            stdout=log, stderr=log, env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", "--cacert", str(tmp_path / "ca.pem"),
                              f"https://127.0.0.1:{ports['good']}/v1/sys/health"],
                             capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "bao.log").read_text()
            time.sleep(0.2)
        yield {"token": token, "ports": ports, "dir": tmp_path}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_tls_to_vault_is_verified_against_vault_cacert(cli, tls_bao):
    d, ports = tls_bao["dir"], tls_bao["ports"]
    cli.secrets.append(tls_bao["token"])
    base = {"VAULT_ADDR": f"https://127.0.0.1:{ports['good']}", "VAULT_TOKEN": tls_bao["token"],
            "PARTNERCERTS_KV_MOUNT": "secret", "VAULT_CACERT": str(d / "ca.pem"),
            # Nothing else may make the certificate trusted.
            "REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", "SSL_CERT_FILE": "", "VAULT_SKIP_VERIFY": ""}
    # The right CA: the whole flow works over TLS.
    cli("csr", "--mzp", MZP, "--app", "fleet", env=base)
    assert "pending" in cli("status", env=base).out
    fix = "TLS verification failed; set VAULT_CACERT to the CA that signed its certificate"
    cases = {
        "a CA file of another CA": {"VAULT_CACERT": str(d / "other-ca.pem")},
        "no VAULT_CACERT (system CAs)": {"VAULT_CACERT": ""},
        "a certificate for another name": {"VAULT_ADDR": f"https://127.0.0.1:{ports['wrong_name']}"},
    }
    for what, change in cases.items():
        started = time.monotonic()
        r = cli("status", ok=False, env={**base, **change})
        took = time.monotonic() - started
        assert r.rc == 4, f"{what}: {r.text}"  # the environment (Vault unusable), not bad input
        assert r.err.count("\n") == 1 and r.err.startswith("error: Vault at https://127.0.0.1:") and fix in r.err, \
            f"{what}: {r.err}"
        assert took < 60, f"{what}: took {took:.0f} s"
    missing = cli("status", ok=False, env={**base, "VAULT_CACERT": str(d / "nope.pem")})
    assert missing.rc == 2 and "VAULT_CACERT=" in missing.err and "no such file" in missing.err
    # Plain http to the TLS listener is not silently accepted either.
    http = cli("status", ok=False, env={**base, "VAULT_ADDR": f"http://127.0.0.1:{ports['good']}"})
    assert http.rc != 0 and "Traceback" not in http.text


# -- network faults and a full disk on a host ---------------------------------------------------------

# A dead peer is detected within ~3 s; connecting gives up after 3 s.
FAST_FAIL = ("-o ServerAliveInterval=1", "-o ServerAliveCountMax=2")


def fault_inventory(hosts, root: str, interpreter: dict[str, str] | None = None) -> str:
    per_host = {h.name: [{"mzp": MZP, "app": "fleet", "dest": f"{root}/fleet"}] for h in hosts.hosts}
    text = inventory_for(hosts, per_host, group_vars={"ansible_ssh_timeout": 3},
                         ssh_extra=FAST_FAIL)
    if interpreter:
        doc = yaml.safe_load(text)
        for host, path in interpreter.items():
            doc["all"]["children"]["integration"]["hosts"][host]["ansible_python_interpreter"] = path
        text = yaml.safe_dump(doc)
    return text


def host_line(err: str, host: str) -> str:
    return next((line.strip() for line in err.splitlines() if line.strip().startswith(f"{host}: ")), "")


@pytest.mark.fault
def test_a_host_that_times_out_keeps_its_old_release_and_is_named(testhosts_factory, cli, raw, inventory, chaos):
    record = chaos("host network: unreachable (times out) during deploy (2 SSH hosts)")
    hosts = testhosts_factory(count=2)
    up, down = [h.name for h in hosts.hosts]
    root = f"/srv/n{uuid.uuid4().hex[:8]}"
    dest = f"{root}/fleet"
    (inventory / "hosts.yml").write_text(fault_inventory(hosts, root))
    cli("rotate")
    old = vault_serial(raw)
    renew(cli)
    new = vault_serial(raw)
    hosts.stop_host(down, unreachable=True)  # the link is gone: connections hang, nothing answers
    started = time.monotonic()
    r = cli("deploy", ok=False)
    assert time.monotonic() - started < 120
    assert r.rc != 0
    assert "unreachable" in host_line(r.err, down), r.err
    assert host_line(r.err, up) == ""
    assert serial_on(hosts, up, dest) == new
    left = mixed(hosts, down, dest, old)
    assert_release_intact(hosts, down, dest, old)
    assert "1/2" in cli("status").out
    hosts.start_host(down)
    cli("deploy")
    assert serial_on(hosts, down, dest) == new
    assert_release_intact(hosts, down, dest, new)
    record.run("failed, host named, old release kept; next deploy converged", hosts_mixed=left)


HANG = """#!/bin/sh
# Stands in for python3 on the host: while {flag} exists, the module's transfer is left hanging mid-way.
if [ -e {flag} ]; then touch {started}; sleep 120; fi
exec /usr/bin/python3 "$@"
"""


@pytest.mark.fault
def test_a_host_that_drops_mid_transfer_keeps_its_old_release_and_is_named(testhosts_factory, cli, raw,
                                                                            inventory, chaos):
    record = chaos("host network: drops off mid-transfer (2 SSH hosts)")
    hosts = testhosts_factory(count=2)
    up, drops = [h.name for h in hosts.hosts]
    root = f"/srv/d{uuid.uuid4().hex[:8]}"
    dest = f"{root}/fleet"
    flag, started_flag, wrapper = "/srv/hang", "/srv/transfer-started", "/srv/python3-hang"
    hosts.run_in_host(drops, ["sh", "-c", f"cat > {wrapper} && chmod 0755 {wrapper}"],
                      input=HANG.format(flag=flag, started=started_flag))
    (inventory / "hosts.yml").write_text(fault_inventory(hosts, root, interpreter={drops: wrapper}))
    cli("rotate")
    old = vault_serial(raw)
    renew(cli)
    new = vault_serial(raw)
    hosts.run_in_host(drops, ["touch", flag])
    result = {}
    deploy = threading.Thread(target=lambda: result.update(r=cli("deploy", ok=False)))
    deploy.start()
    try:
        deadline = time.monotonic() + 90
        while hosts.run_in_host(drops, ["test", "-e", started_flag]).returncode != 0:
            assert deploy.is_alive() and time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.2)
        # The module is on its way to the host (its python has not read it yet): the host drops off the network.
        hosts.stop_host(drops, unreachable=True)
    finally:
        deploy.join(timeout=180)
    assert not deploy.is_alive()
    r = result["r"]
    assert r.rc != 0
    line = host_line(r.err, drops)
    assert "unreachable" in line or "failed" in line.lower(), r.err
    assert serial_on(hosts, up, dest) == new
    left = mixed(hosts, drops, dest, old)
    assert_release_intact(hosts, drops, dest, old)
    assert hosts.run_in_host(drops, ["ls", f"{dest}/releases"]).stdout.split() == [old]
    hosts.run_in_host(drops, ["rm", "-f", flag, started_flag])
    hosts.start_host(drops)
    cli("deploy")
    assert_release_intact(hosts, drops, dest, new)
    record.run("failed, host named, old release kept; next deploy converged", hosts_mixed=left)


@pytest.mark.fault
def test_a_full_disk_on_a_host_fails_staging_and_the_old_release_keeps_serving(testhosts_factory, cli, raw,
                                                                                inventory, chaos):
    record = chaos("host disk full (2 MB tmpfs) during staging")
    hosts = testhosts_factory(count=1, srv_size="2m")
    host = hosts.hosts[0].name
    root = f"/srv/f{uuid.uuid4().hex[:8]}"
    dest = f"{root}/fleet"
    (inventory / "hosts.yml").write_text(fault_inventory(hosts, root))
    cli("rotate")
    old = vault_serial(raw)
    renew(cli)
    new = vault_serial(raw)
    fill = hosts.run_in_host(host, ["dd", "if=/dev/zero", "of=/srv/fill", "bs=4k"])
    assert "No space left on device" in fill.stderr
    r = cli("deploy", ok=False)
    assert r.rc != 0
    line = host_line(r.err, host)
    assert "No space left on device" in line and "(current left as it was)" in line, r.err
    left = mixed(hosts, host, dest, old)
    assert_release_intact(hosts, host, dest, old)
    assert hosts.run_in_host(host, ["ls", "-A", f"{dest}/releases"]).stdout.split() == [old]
    hosts.run_in_host(host, ["rm", "-f", "/srv/fill"])
    cli("deploy")
    assert serial_on(hosts, host, dest) == new
    assert_release_intact(hosts, host, dest, new)
    record.run("staging failed with the reason, old release kept; next deploy converged", hosts_mixed=left)
