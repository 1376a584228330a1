"""Deploy over real SSH to three hosts, each an sshd in its own network and mount namespace.

Results are read on the hosts with independent readers (openssl, stat, curl) through the
host's own namespaces, never through the code under test.
"""
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, Result, free_port

MZP, APP = "MZP654321", "fleet"
CRED = f"{MZP}/apps/{APP}"


@pytest.fixture(scope="session")
def service_user():
    """The service account that owns the deployed files (the hosts share the control node's /etc)."""
    made = subprocess.run(["id", "pcsvc"], capture_output=True).returncode != 0
    if made:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "pcsvc"], check=True)
    yield "pcsvc"
    if made:
        subprocess.run(["userdel", "pcsvc"], check=False)


class Fleet:
    """Three SSH hosts deploying one credential under a directory of their own per test."""

    def __init__(self, hosts, cli, raw, inventory, root, port):
        self.hosts, self.cli, self.raw, self.inventory, self.root, self.port = hosts, cli, raw, inventory, root, port
        self.names = [h.name for h in hosts.hosts]
        self.dest = f"{root}/{APP}"

    def sh(self, host, *argv):
        return self.hosts.run_in_host(host, list(argv))

    def serial(self, host):
        p = self.sh(host, "openssl", "x509", "-noout", "-serial", "-in", f"{self.dest}/current/client.crt")
        return p.stdout.strip().removeprefix("serial=") if p.returncode == 0 else None

    def vault_serial(self):
        return self.raw.read(f"{CRED}/current")["data"]["serial"]

    def renew(self):
        """A new certificate in Vault (new key, signed by the sandbox authority), hosts untouched."""
        self.cli("csr", "--mzp", MZP, "--app", APP, "--force")
        self.cli("rotate", "--no-deploy")
        self.learn_secrets()

    def learn_secrets(self):
        cur = self.raw.read(f"{CRED}/current")["data"]
        for s in (cur["p12_password"], self.raw.read(f"{MZP}/account")["data"]["password"]):
            if s not in self.cli.secrets:
                self.cli.secrets.append(s)


def recap(out):
    return {m.group(1): dict(re.findall(r"(\w+)=(\d+)", m.group(2)))
            for m in re.finditer(r"^(\S+)\s+: (ok=.*)$", out, re.M)}


@pytest.fixture
def fleet(ssh_hosts, cli, raw, inventory, service_user):
    root = f"/srv/t{uuid.uuid4().hex[:8]}"
    gateway = str(ssh_hosts.subnet.network_address + 1)
    port = free_port()
    api = f"https://{gateway}:{port}/connectedcar/v3"
    text = ssh_hosts.inventory_text(extra_vars={
        "partnercerts_deploy_credentials": [{
            "mzp": MZP, "app": APP, "dest": f"{root}/{APP}", "owner": "pcsvc", "group": "pcsvc",
            "validate_command": f"test -s {root}/{APP}/current/client.crt",
            "reload_command": f"echo reload >> {root}/reloads && test ! -e {root}/fail-reload",
        }],
        "partnercerts_deploy_api_url": api,
        "partnercerts_deploy_smoke_url": api + "/fleets",
    })
    (inventory / "hosts.yml").write_text(text)
    cli("sandbox.up", "--port", str(port), "--bind", f"127.0.0.1,{gateway}")
    f = Fleet(ssh_hosts, cli, raw, inventory, root, port)
    yield f
    cli("sandbox.down", ok=False)
    for name in f.names:
        if ssh_hosts.host(name).pid is None:
            ssh_hosts.start_host(name)
        ssh_hosts.run_in_host(name, ["rm", "-rf", root])


def test_first_deploy_check_mode_idempotence_modes_and_a_real_api_call(fleet, raw, cli):
    cli("rotate", "--no-deploy")
    fleet.learn_secrets()
    check = cli("deploy", "--check")
    assert "current: (none)" in check.out and "new release" in check.out
    assert all(fleet.serial(h) is None for h in fleet.names)
    assert all(fleet.sh(h, "test", "-e", fleet.root).returncode != 0 for h in fleet.names)

    first = cli("deploy")
    assert all(r["changed"] != "0" and r["failed"] == "0" for r in recap(first.out).values())
    serial = fleet.vault_serial()
    fp = raw.read(f"{CRED}/current")["data"]["fingerprint_sha256"]
    for h in fleet.names:
        assert fleet.serial(h) == serial
        link = fleet.sh(h, "readlink", f"{fleet.dest}/current").stdout.strip()
        assert link == f"releases/{serial}"
        got = fleet.sh(h, "openssl", "x509", "-noout", "-fingerprint", "-sha256",
                       "-in", f"{fleet.dest}/current/client.crt")
        assert got.stdout.strip().split("=")[1].replace(":", "").lower() == fp
        modes = fleet.sh(h, "stat", "-c", "%n %a %U %G", *[f"{fleet.dest}/current/{n}" for n in
                         ("client.crt", "client.key", "ca.crt", "client.p12", "client.env")],
                         f"{fleet.dest}/releases").stdout.split("\n")
        got_modes = {line.split()[0].rsplit("/", 1)[1]: line.split()[1:] for line in modes if line}
        assert got_modes == {"client.crt": ["644", "pcsvc", "pcsvc"], "client.key": ["600", "pcsvc", "pcsvc"],
                             "ca.crt": ["644", "pcsvc", "pcsvc"], "client.p12": ["600", "pcsvc", "pcsvc"],
                             "client.env": ["600", "pcsvc", "pcsvc"], "releases": ["750", "pcsvc", "pcsvc"]}
        assert fleet.sh(h, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 1
        # An independent client on the host, with all three credentials, against the sandbox API.
        env = dict(line.split("=", 1) for line in fleet.sh(h, "cat", f"{fleet.dest}/current/client.env")
                   .stdout.splitlines())
        curl = fleet.sh(h, "curl", "-sS", "--cert", f"{fleet.dest}/current/client.crt", "--key",
                        f"{fleet.dest}/current/client.key", "--cacert", f"{fleet.dest}/current/ca.crt",
                        "-u", f"{env['PSA_MZP']}:{env['PSA_MZP_PASSWORD']}", "-w", "\n%{http_code}",
                        f"{env['PSA_API_URL']}/fleets?client_id={env['PSA_CLIENT_ID']}")
        assert curl.stdout.rsplit("\n", 1)[1] == "200", curl.stdout + curl.stderr
        # The bundle opens with the password from client.env, for keytool too.
        fleet.sh(h, "cp", f"{fleet.dest}/current/client.p12", f"{fleet.root}/check.p12")
        p12 = fleet.sh(h, "openssl", "pkcs12", "-in", f"{fleet.root}/check.p12", "-noout",
                       "-passin", f"pass:{env['PSA_P12_PASSWORD']}")
        assert p12.returncode == 0, p12.stderr

    second = cli("deploy")
    assert all(r["changed"] == "0" and r["failed"] == "0" for r in recap(second.out).values()), second.out
    again = cli("deploy", "--check")
    assert all(r["changed"] == "0" for r in recap(again.out).values())
    assert all(fleet.sh(h, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 1 for h in fleet.names)
    rows = json.loads(cli("status", "--json").out)
    row = next(r for r in rows if r["app"] == APP)
    assert (row["hosts_in_sync"], row["hosts_total"]) == (3, 3)
    assert "3/3" in cli("status").out


def test_a_down_host_is_named_the_others_deploy_and_the_next_run_catches_up(fleet, cli, ssh_hosts, inventory):
    from tests.integration.test_rotation_prod import webhook_server
    url, received, stop = webhook_server()
    (inventory / "group_vars" / "all" / "notify.yml").write_text(yaml.safe_dump(
        {"partnercerts_notify": {"webhook": {"url": url}}}))
    try:
        cli("rotate")
        fleet.learn_secrets()
        old = fleet.vault_serial()
        down = fleet.names[2]
        ssh_hosts.stop_host(down)
        fleet.renew()
        new = fleet.vault_serial()
        r = cli("deploy", ok=False)
        assert r.rc != 0
        assert re.search(rf"{down}: unreachable", r.err), r.err
        assert [fleet.serial(h) for h in fleet.names] == [new, new, old], r.err
        assert "2/3" in cli("status").out
        received.clear()
        failed = cli("rotate", ok=False)  # the scheduled run retries and alerts while the host stays down
        assert failed.rc != 0 and down in failed.err
        events = [e for batch in received for e in batch["events"]]
        assert [(e["kind"], e["details"]["hosts"]) for e in events if e["app"] == APP] == [("deploy_failed", "2/3")]
        ssh_hosts.start_host(down)
        plan = cli("rotate", "--dry-run")
        assert "would be deployed" in plan.out
        received.clear()
        cli("rotate")
        assert [fleet.serial(h) for h in fleet.names] == [new, new, new]
        assert "3/3" in cli("status").out
        events = [e for batch in received for e in batch["events"]]
        assert [(e["kind"], e["details"]["hosts"]) for e in events if e["app"] == APP] == [("deployed", "3/3")]
    finally:
        stop()


def test_a_failing_reload_rolls_that_host_back_to_the_old_certificate(fleet, cli):
    cli("rotate")
    fleet.learn_secrets()
    old = fleet.vault_serial()
    bad = fleet.names[1]
    fleet.sh(bad, "touch", f"{fleet.root}/fail-reload")
    fleet.renew()
    new = fleet.vault_serial()
    r = cli("deploy", ok=False)
    assert r.rc != 0
    assert re.search(rf"{bad}: {MZP}/{APP}: .*non-zero return code.*\(switched back to {old}\)", r.err), r.err
    assert [fleet.serial(h) for h in fleet.names] == [new, old, new]
    # It was reloaded three times: first deploy, the failed reload, the reload after switching back.
    assert fleet.sh(bad, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 3
    fleet.sh(bad, "rm", f"{fleet.root}/fail-reload")
    cli("deploy")
    assert [fleet.serial(h) for h in fleet.names] == [new, new, new]


def test_a_changed_deploy_is_one_module_call_per_host_and_a_failed_validation_switches_back(fleet, cli, env):
    inv = fleet.inventory / "hosts.yml"
    doc = yaml.safe_load(inv.read_text())
    cred = doc["all"]["children"]["integration"]["vars"]["partnercerts_deploy_credentials"][0]
    cred["validate_command"] = f"test -s {fleet.dest}/current/client.crt && test ! -e {fleet.root}/fail-validate"
    inv.write_text(yaml.safe_dump(doc))
    cli("rotate")
    fleet.learn_secrets()
    fleet.renew()
    new = fleet.vault_serial()
    run_env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    p = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-vvv", "-i", str(fleet.inventory),
                        str(ROOT / "playbooks" / "deploy.yml")], env=run_env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # -vvv names each module Ansible sends to a host: per host one release call that staged, checked, switched,
    # validated, reloaded and verified, and the smoke call; no shell task, no second inspection.
    sent = re.findall(r"Using module file \S+/([\w.]+)\.py", p.stdout + p.stderr)
    assert sent == ["release"] * 6, sent
    assert [fleet.serial(h) for h in fleet.names] == [new] * 3
    assert all(fleet.sh(h, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 2 for h in fleet.names)
    assert "3/3" in cli("status").out

    bad = fleet.names[1]
    fleet.sh(bad, "touch", f"{fleet.root}/fail-validate")
    fleet.renew()
    newer = fleet.vault_serial()
    r = cli("deploy", ok=False)
    assert re.search(rf"{bad}: {MZP}/{APP}: validate_command failed: non-zero return code 1 "
                     rf"\(switched back to {new}\)", r.err), r.err
    assert [fleet.serial(h) for h in fleet.names] == [newer, new, newer]
    # Not reloaded on the release that did not validate, reloaded again once switched back, and recorded so.
    assert fleet.sh(bad, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 3
    assert fleet.sh(bad, "test", "-e", f"{fleet.dest}/.reload-pending").returncode != 0
    assert "2/3" in cli("status").out
    fleet.sh(bad, "rm", f"{fleet.root}/fail-validate")
    cli("deploy")
    assert [fleet.serial(h) for h in fleet.names] == [newer] * 3


def test_a_failed_canary_stops_the_later_batches(fleet, cli):
    cli("rotate")
    fleet.learn_secrets()
    old = fleet.vault_serial()
    canary = fleet.names[0]
    fleet.sh(canary, "touch", f"{fleet.root}/fail-reload")
    fleet.renew()
    r = cli("deploy", "--batches", "1,100%", ok=False)
    assert r.rc != 0 and f"{canary}: {MZP}/{APP}:" in r.err
    assert [fleet.serial(h) for h in fleet.names] == [old, old, old]
    bad = cli("deploy", "--batches", "one", ok=False)
    assert bad.rc == 2 and "--batches 'one'" in bad.err


def test_a_certificate_that_does_not_match_its_key_is_never_switched_in(fleet, cli, raw):
    cli("rotate")
    fleet.learn_secrets()
    old = fleet.vault_serial()
    cur = raw.read(f"{CRED}/current")
    # Corrupt what Vault holds (as a broken import or a bad restore would): another key beside the certificate.
    from partnercerts import keys
    from tests.pki import key
    bad = dict(cur["data"], key_pem=keys.to_pem(key()), serial="0BAD")
    raw.c.secrets.kv.v2.create_or_update_secret(f"partnercerts/{CRED}/current", bad, cas=cur["metadata"]["version"],
                                                mount_point=raw.mount)
    r = cli("deploy", ok=False)
    assert "Vault's key does not match its certificate (serial 0BAD); refusing to deploy" in r.err
    assert "(current left as it was)" in r.err and r.err.count("refusing to deploy") == 3
    assert [fleet.serial(h) for h in fleet.names] == [old] * 3
    for h in fleet.names:  # the refused release was cleaned up, nothing half-staged is left
        listing = fleet.sh(h, "ls", "-A", f"{fleet.dest}/releases").stdout.split()
        assert listing == [old]


def test_rollback_switches_vault_and_hosts_back_without_restaging(fleet, cli):
    cli("rotate")
    fleet.learn_secrets()
    old = fleet.vault_serial()
    fleet.renew()
    cli("deploy")
    new = fleet.vault_serial()
    assert new != old
    r = cli("rollback", "--mzp", MZP, "--app", APP)
    assert f"serial {old}" in r.out
    assert fleet.vault_serial() == old
    for h in fleet.names:
        assert fleet.serial(h) == old
        assert sorted(fleet.sh(h, "ls", f"{fleet.dest}/releases").stdout.split()) == sorted([old, new])
    bad = cli("rollback", "--mzp", MZP, "--app", APP, "--to", "DEADBEEF", ok=False)
    assert bad.rc == 2 and "--to DEADBEEF: no such serial" in bad.err


def test_verify_reports_drift_per_host_and_changes_nothing(fleet, cli, raw):
    cli("rotate")
    fleet.learn_secrets()
    assert "failed=0" in cli("verify").out
    a, b, c = fleet.names
    fleet.sh(a, "sh", "-c", f"echo tampered >> {fleet.dest}/current/client.crt")
    fleet.sh(b, "rm", f"{fleet.dest}/current")
    before = {h: fleet.sh(h, "find", fleet.root, "-printf", "%p %s %T@\n").stdout for h in fleet.names}
    r = cli("verify", ok=False)
    assert r.rc != 0
    assert re.search(rf"{a}: .*mismatched: client.crt was changed since it was deployed", r.err), r.err
    assert re.search(rf"{b}: .*missing: nothing deployed in current", r.err), r.err
    assert c not in r.err
    assert {h: fleet.sh(h, "find", fleet.root, "-printf", "%p %s %T@\n").stdout for h in fleet.names} == before
    assert "1/3" in cli("status").out
    # A certificate renewed in Vault but not deployed is stale on every host; expiring is a threshold.
    cli("rotate")  # repairs a and b
    fleet.renew()
    stale = cli("verify", ok=False)
    assert all(re.search(rf"{h}: .*stale: serves serial", stale.err) for h in fleet.names), stale.err
    cli("deploy")
    inv = fleet.inventory / "hosts.yml"
    doc = yaml.safe_load(inv.read_text())
    doc["all"]["children"]["integration"]["vars"]["partnercerts_deploy_expiring_days"] = 400
    inv.write_text(yaml.safe_dump(doc))
    expiring = cli("verify", ok=False)
    assert all(re.search(rf"{h}: .*expiring: the served certificate expires in 36\d days", expiring.err)
               for h in fleet.names), expiring.err


def test_no_secret_in_ansible_output_even_at_vvv_nor_on_the_control_node(fleet, cli, env, tmp_path):
    cli("rotate")
    fleet.learn_secrets()
    fleet.renew()
    run_env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    p = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-vvv", "-i", str(fleet.inventory),
                        str(ROOT / "playbooks" / "deploy.yml"), "--diff"],
                       env=run_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "ESTABLISH SSH CONNECTION" in out and "partnercerts/psa/plugins/modules/release.py" in out  # -vvv, deployed
    cli.assert_clean(Result(p.returncode, p.stdout, p.stderr))
    key_body = fleet.raw.read(f"{CRED}/current")["data"]["key_pem"].splitlines()[1]
    assert key_body not in out
    # Nothing with a key on the control node's disk: the test's home (Ansible's local temp) and tmp dir.
    found = subprocess.run(["grep", "-rlI", "-e", "PRIVATE KEY", "-e", key_body, env["HOME"], str(tmp_path)],
                           capture_output=True, text=True)
    assert found.stdout == ""


def test_rekey_withdraw_removes_the_exposed_credential_from_every_host_until_the_new_one_is_imported(
        fleet, raw, cli, inventory, tmp_path):
    from tests.integration.test_rotation_prod import set_partner
    cli("rotate")  # the sandbox authority signs at once; deployed to the three hosts
    fleet.learn_secrets()
    old = fleet.vault_serial()
    old_key = raw.read(f"{CRED}/current")["data"]["key_pem"]
    assert all(fleet.serial(h) == old for h in fleet.names)
    set_partner(inventory, submission={"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "pki@mpsa.example"})
    reason = "backup tape with the key lost"

    # Without a terminal and without --yes: asked for nothing, refused, nothing changed anywhere.
    before = raw.snapshot()
    refused = cli("rekey", "--mzp", MZP, "--app", APP, "--reason", reason, "--withdraw", ok=False)
    assert refused.rc == 2 and "confirm with --yes" in refused.err and "nothing was changed" in refused.err
    assert raw.snapshot() == before and all(fleet.serial(h) == old for h in fleet.names)

    r = cli("rekey", "--mzp", MZP, "--app", APP, "--reason", reason, "--withdraw", "--yes")
    assert f"serial {old} is withdrawn in Vault; removing it from the hosts now: the service has no credential" \
        in r.out, r.text
    for h in fleet.names:
        assert fleet.sh(h, "test", "-e", f"{fleet.dest}/current").returncode != 0  # the service has nothing
        assert fleet.sh(h, "test", "-e", f"{fleet.dest}/.reload-pending").returncode != 0  # and was reloaded
        assert fleet.sh(h, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 2
        left = fleet.sh(h, "find", fleet.dest, "-type", "f").stdout.split()
        assert not [p for p in left if f"/releases/{old}" in p], left  # the exposed key's files are gone
        for path in left:  # and no copy of it anywhere under the credential's directory
            assert old_key.strip() not in fleet.sh(h, "cat", path).stdout, path
    cur = raw.read(f"{CRED}/current")["data"]
    assert cur["serial"] == old and cur["withdrawn"]["reason"] == reason and cur["withdrawn"]["by"]
    assert raw.read(f"{CRED}/history/{old}")["data"]["withdrawn"]["reason"] == reason
    assert raw.read(f"{CRED}/pending")["data"]["rekey"]["revoke_serial"] == old
    row = json.loads(cli("status", "--json").out)[0]
    assert row["withdrawn_at"] and row["withdrawn_by"] == cur["withdrawn"]["by"]
    assert (row["state"], row["pending_stage"], row["hosts_in_sync"], row["hosts_total"]) == ("pending", "submitted",
                                                                                           3, 3)
    assert f"serial {old} was withdrawn by" in cli("status").err
    # Nothing puts it back: verify agrees the hosts serve nothing, a deploy or a rotate changes nothing,
    # a rollback to it is refused.
    cli("verify")
    again = cli("deploy")
    assert all(v["changed"] == "0" and v["failed"] == "0" for v in recap(again.out).values()), again.out
    cli("rotate")
    assert all(fleet.serial(h) is None for h in fleet.names)
    assert all(fleet.sh(h, "cat", f"{fleet.root}/reloads").stdout.count("reload") == 2 for h in fleet.names)
    back = cli("rollback", "--mzp", MZP, "--app", APP, "--to", old, ok=False)
    assert back.rc == 2 and f"--to {old}: that certificate was withdrawn by" in back.err
    # A host that came back with the old release (restored from a backup) is drift, and the next deploy removes it.
    restored = fleet.names[0]
    fleet.sh(restored, "sh", "-c", f"mkdir -p {fleet.dest}/releases/{old} && cp /etc/hostname "
             f"{fleet.dest}/releases/{old}/client.crt && ln -s releases/{old} {fleet.dest}/current")
    drift = cli("verify", ok=False)
    assert drift.rc != 0 and f"withdrawn: current still points at {old}" in drift.text, drift.text
    cli("deploy")
    assert fleet.sh(restored, "test", "-e", f"{fleet.dest}/current").returncode != 0
    assert fleet.sh(restored, "test", "-e", f"{fleet.dest}/releases/{old}").returncode != 0

    # The authority signs the new key: imported, the withdrawal mark goes with the old certificate, deployed.
    set_partner(inventory, submission="sandbox")
    cli("submit", "--mzp", MZP, "--app", APP)
    new = fleet.vault_serial()
    assert new != old and "withdrawn" not in raw.read(f"{CRED}/current")["data"]
    fleet.learn_secrets()
    cli("rotate")
    assert all(fleet.serial(h) == new for h in fleet.names)
    assert json.loads(cli("status", "--json").out)[0]["withdrawn_at"] is None
