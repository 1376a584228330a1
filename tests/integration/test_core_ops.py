"""rotate on the sandbox authority, status, p12, account, and how the Vault connection is chosen."""
import datetime as dt
import json
import os
import stat
import subprocess

import hvac.exceptions
import pytest

from tests.integration.test_core_csr import CRED


def future(days: int) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)).isoformat()


def test_rotate_takes_the_partner_from_nothing_to_active_then_renews(cli, raw):
    dry = cli("rotate", "--dry-run")
    assert "MZP654321/fleet" in dry.out and "issue" in dry.out and "nothing was changed" in dry.out
    assert raw.snapshot() == {}
    first = cli("rotate")
    assert first.out.count("signed by the sandbox authority and imported") == 2
    shown = cli("status", "--json").out
    rows = {r["app"]: r for r in json.loads(shown)}
    assert {r["state"] for r in rows.values()} == {"active"}
    assert all(r["client_id"] and r["days_left"] == 364 for r in rows.values())
    # One credential per line, between the brackets: grep finds a credential, a JSON reader the whole.
    lines = shown.strip().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 4, shown
    assert sorted(json.loads(line.rstrip(","))["app"] for line in lines[1:-1]) == sorted(rows)
    # The certificate chains to the sandbox CA, read by openssl.
    cur = raw.read(f"{CRED}/current")["data"]
    ca = raw.c.secrets.kv.v2.read_secret_version("partnercerts/sandbox/authority", mount_point=raw.mount,
                                                 raise_on_deleted_version=True)["data"]["data"]["cert_pem"]
    assert cur["ca_pem"] == ca
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=cur["cert_pem"].encode(),
                          capture_output=True, check=True).stdout.decode()
    assert "TLS Web Client Authentication" in text and "Programs Partners" in text
    second = cli("rotate")
    assert "nothing to do" in second.out and "FAILED" not in second.out
    # 250 days on, a third of the lifetime is left: renew, keep the Client ID, keep the old one in history.
    later = {"PARTNERCERTS_NOW": future(250)}
    status = json.loads(cli("status", "--json", env=later).out)
    assert {r["state"] for r in status} == {"expiring"}
    plan = cli("rotate", "--dry-run", env=later)
    assert plan.out.count("renew") == 2 and "under a third" in plan.out
    cli("rotate", env=later)
    new = raw.read(f"{CRED}/current")
    assert new["metadata"]["version"] == 2 and new["data"]["client_id"] == cur["client_id"]
    assert new["data"]["serial"] != cur["serial"]
    assert raw.read(f"{CRED}/history/{cur['serial']}")["data"]["key_pem"] == cur["key_pem"]
    # Past the new certificate's end: expired shows, and rotate fixes it.
    gone = {"PARTNERCERTS_NOW": future(250 + 366)}
    assert {r["state"] for r in json.loads(cli("status", "--json", env=gone).out)} == {"expired"}
    assert "expired on" in cli("rotate", "--dry-run", env=gone).out


def test_rotate_resumes_an_interrupted_run_with_the_same_key(cli, raw):
    # A CSR made but never submitted (the run died): rotate submits that CSR, no second key.
    cli("csr", "--mzp", "MZP654321", "--app", "fleet")
    key = raw.read(f"{CRED}/pending")["data"]["key_pem"]
    plan = cli("rotate", "--mzp", "MZP654321", "--app", "fleet", "--dry-run")
    assert "submit" in plan.out and "never submitted" in plan.out
    cli("rotate", "--mzp", "MZP654321", "--app", "fleet")
    assert raw.read(f"{CRED}/current")["data"]["key_pem"] == key
    assert raw.read(f"{CRED}/pending")["metadata"]["version"] == 2  # created, then consumed


def test_stale_index_is_shown_and_repaired(cli, raw):
    cli("rotate", "--mzp", "MZP654321", "--app", "fleet")
    # A run that died between writing current and deriving the index again: the index is marked
    # (`writing`, the version being written, as Store.put_current marks it), current is one version ahead.
    index = raw.index(CRED)
    cur = raw.read(f"{CRED}/current")
    kv = raw.c.secrets.kv.v2
    kv.update_metadata(f"partnercerts/index/{CRED.replace('/apps/', '.')}", mount_point=raw.mount,
                       custom_metadata={**index, "writing": str(cur["metadata"]["version"] + 1),
                                        "client_id": "the-old-client-id"})
    kv.create_or_update_secret(f"partnercerts/{CRED}/current", {**cur["data"]}, cas=cur["metadata"]["version"],
                               mount_point=raw.mount)
    st = cli("status")
    assert "index is stale" in st.err
    assert "the-old-client-id" in st.out  # status shows what the index says, and says it is stale
    cli("rotate")
    repaired = raw.index(CRED)
    assert repaired["serial"] == raw.read(f"{CRED}/current")["data"]["serial"]
    assert repaired["current_version"] == str(cur["metadata"]["version"] + 1) and "writing" not in repaired
    assert repaired["client_id"] == cur["data"]["client_id"]
    assert "index is stale" not in cli("status").err


def test_status_needs_metadata_only(cli, bao, mount, raw):
    cli("rotate")
    client = bao.client()
    client.sys.create_or_update_policy("auditor-test",
                                       f'path "{mount}/metadata/*" {{ capabilities = ["read", "list"] }}')
    token = client.auth.token.create(policies=["auditor-test"], ttl="5m")["auth"]["client_token"]
    cli.secrets.append(token)
    rows = json.loads(cli("status", "--json", env={"VAULT_TOKEN": token}).out)
    assert {r["state"] for r in rows} == {"active"}
    # The same token cannot read secret data, so status really did not.
    with pytest.raises(hvac.exceptions.Forbidden):
        type(client)(url=bao.addr, token=token).secrets.kv.v2.read_secret_version(
            f"partnercerts/{CRED}/current", mount_point=mount, raise_on_deleted_version=True)


def test_p12_modern_and_legacy_open_in_openssl_and_keytool(cli, raw, tmp_path):
    cli("rotate", "--mzp", "MZP654321", "--app", "fleet")
    cur = raw.read(f"{CRED}/current")["data"]
    pw = cur["p12_password"]
    cli.secrets.append(pw)
    out = tmp_path / "fleet.p12"
    r = cli("p12", "--mzp", "MZP654321", "--app", "fleet", "--out", str(out))
    assert pw not in r.text and stat.S_IMODE(out.stat().st_mode) == 0o600
    info = subprocess.run(["openssl", "pkcs12", "-in", str(out), "-info", "-noout", "-passin", f"pass:{pw}"],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "AES-256-CBC" in info.stderr and "sha256" in info.stderr.lower()
    certs = subprocess.run(["openssl", "pkcs12", "-in", str(out), "-nokeys", "-passin", f"pass:{pw}"],
                           capture_output=True, text=True, check=True).stdout
    assert certs.count("BEGIN CERTIFICATE") == 2 and cur["cert_pem"].strip() in certs
    ks = subprocess.run(["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(out), "-storepass", pw],
                        capture_output=True, text=True)
    assert ks.returncode == 0 and "PrivateKeyEntry" in ks.stdout, ks.stdout + ks.stderr
    legacy = tmp_path / "legacy.p12"
    cli.secrets.remove(pw)  # --show-password prints it on purpose
    shown = cli("p12", "--mzp", "MZP654321", "--app", "fleet", "--out", str(legacy), "--legacy", "--show-password")
    assert shown.out.strip() == pw
    info = subprocess.run(["openssl", "pkcs12", "-in", str(legacy), "-info", "-noout", "-legacy",
                           "-passin", f"pass:{pw}"], capture_output=True, text=True)
    assert info.returncode == 0 and "TripleDES" in info.stderr, info.stderr
    ks = subprocess.run(["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(legacy), "-storepass", pw],
                        capture_output=True, text=True)
    assert ks.returncode == 0 and "PrivateKeyEntry" in ks.stdout


def test_p12_before_any_certificate_says_what_to_run(cli):
    r = cli("p12", "--mzp", "MZP654321", "--app", "fleet", "--out", "x.p12", ok=False)
    assert r.rc == 2 and "scripts/inv rotate --mzp MZP654321 --app fleet" in r.err


def test_account_password_from_stdin_never_printed(cli, raw):
    secret = "s3cr3t-Pässword"
    cli.secrets.append(secret)
    r = cli("account", "--mzp", "MZP654321", input=secret + "\n")
    assert "stored" in r.out
    assert raw.read("MZP654321/account")["data"]["password"] == secret
    assert "unchanged" in cli("account", "--mzp", "MZP654321", input=secret + "\n").out
    assert raw.read("MZP654321/account")["metadata"]["version"] == 1
    r = cli("account", "--mzp", "MZP654321", input="\n", ok=False)
    assert r.rc == 2 and "non-empty" in r.err
    assert raw.read("MZP654321/account")["metadata"]["version"] == 1


def test_missing_mount_names_the_bootstrap_command_which_fixes_it(cli, bao):
    env = {"PARTNERCERTS_KV_MOUNT": "nomount" + os.urandom(3).hex()}
    for cmd in (["status"], ["rotate"], ["csr", "--mzp", "MZP654321", "--app", "fleet"]):
        r = cli(*cmd, ok=False, env=env)
        assert r.rc == 4 and "scripts/inv vault.bootstrap" in r.err, r.err
    assert "enabled" in cli("vault.bootstrap", env=env).out
    assert "already enabled" in cli("vault.bootstrap", env=env).out
    cli("status", env=env)
    bao.client().sys.disable_secrets_engine(env["PARTNERCERTS_KV_MOUNT"])


def test_vault_credentials_from_token_file_and_approle(cli, bao, mount, env):
    client = bao.client()
    home = env["HOME"]
    with open(os.path.join(home, ".vault-token"), "w") as fh:
        fh.write(bao.token)
    cli("status", env={"VAULT_TOKEN": ""})
    os.unlink(os.path.join(home, ".vault-token"))
    r = cli("status", ok=False, env={"VAULT_TOKEN": ""})
    assert r.rc == 2 and "VAULT_ROLE_ID" in r.err
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy("rotator-test",
                                       f'path "{mount}/*" {{ capabilities = ["create","read","update","list"] }}')
    client.auth.approle.create_or_update_approle("rotator-test", token_policies=["rotator-test"])
    role_id = client.auth.approle.read_role_id("rotator-test")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id("rotator-test")["data"]["secret_id"]
    cli.secrets.append(secret_id)
    cli("rotate", "--mzp", "MZP654321", "--app", "fleet",
        env={"VAULT_TOKEN": "", "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id})
    r = cli("status", ok=False, env={"VAULT_TOKEN": "", "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": "wrong"})
    assert r.rc == 4 and "refused the AppRole login" in r.err
    r = cli("status", ok=False, env={"VAULT_CACERT": "/nonexistent/ca.pem"})
    assert r.rc == 2 and "VAULT_CACERT=/nonexistent/ca.pem" in r.err


def test_unreachable_vault_is_one_clear_line(cli):
    import time
    t0 = time.monotonic()
    r = cli("status", ok=False, env={"VAULT_ADDR": "http://127.0.0.1:1", "PARTNERCERTS_VAULT_RETRY_SECONDS": "2"})
    assert r.rc == 4 and "unreachable" in r.err and r.err.count("\n") == 1
    assert 1 <= time.monotonic() - t0 < 10  # retried within its budget, then gave up


def test_several_vault_nodes_are_tried_in_turn(cli, bao):
    r = cli("status", env={"VAULT_ADDR": f"http://127.0.0.1:1,{bao.addr}"})
    assert "MZP654321" in r.out


def test_run_records_keep_their_versions_for_the_audit_trail(cli, raw):
    cli("rotate")
    assert raw.meta("runs/rotate")["max_versions"] == 1000
    assert raw.meta(f"{CRED}/current")["max_versions"] == 1000 and raw.meta(f"{CRED}/pending")["max_versions"] == 1000
