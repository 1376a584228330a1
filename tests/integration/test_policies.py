"""vault.bootstrap's least-privilege policies and AppRoles, proven with real AppRole logins:
each role can do its job through the CLI, and a raw client holding its token can do nothing more."""
import datetime as dt
import json
import os
import stat
import uuid

import hvac
import hvac.exceptions
import pytest

from tests.conftest import Cli, free_port
from tests.integration.test_core_csr import CRED

ROLES = ("rotator", "deployer", "auditor")
P = "partnercerts"
IDX = "index/MZP654321.fleet"  # the index of CRED, under P


def bootstrap(cli, mount, *args, **env):
    return cli("vault.bootstrap", *args, env={"PARTNERCERTS_KV_MOUNT": mount, **env})


def login(cli, addr: str, creds: dict) -> hvac.Client:
    """A raw client logged in through the AppRole, exactly as the CLI logs in."""
    c = hvac.Client(url=addr)
    c.auth.approle.login(role_id=creds["VAULT_ROLE_ID"], secret_id=creds["VAULT_SECRET_ID"])
    cli.secrets.append(c.token)
    return c


def denied(fn, *args, **kw):
    with pytest.raises(hvac.exceptions.Forbidden):
        fn(*args, **kw)


def kv(c):
    return c.secrets.kv.v2


def read(c, mount, path, **kw):
    return kv(c).read_secret_version(f"{P}/{path}", mount_point=mount, raise_on_deleted_version=True, **kw)["data"]


@pytest.fixture
def roles(cli, mount) -> dict[str, dict]:
    """Bootstrap this test's mount; per role the environment the CLI logs in with (VAULT_TOKEN empty)."""
    bootstrap(cli, mount)
    out = {}
    for role in ROLES:
        r = cli("vault.secret-id", "--role", role)
        pairs = dict(line.split("=", 1) for line in r.out.splitlines())
        assert set(pairs) == {"VAULT_ROLE_ID", "VAULT_SECRET_ID"}
        cli.secrets.append(pairs["VAULT_SECRET_ID"])
        out[role] = {"VAULT_TOKEN": "", **pairs}
    return out


@pytest.fixture
def rotated(cli, raw):
    """Both demo credentials active (as root), then a new pending key for fleet: every kind of record exists."""
    cli("rotate", "--no-deploy")
    cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--force")
    assert raw.read(f"{CRED}/pending")["data"]["state"] == "pending"
    return raw.read(f"{CRED}/current")["data"]


# -- bootstrap ------------------------------------------------------------------------------
def test_bootstrap_writes_policies_and_approles_idempotently(cli, bao, mount):
    first = bootstrap(cli, mount, "--role-ids").out.splitlines()
    assert first[0] == f"KV v2 mount '{mount}' already enabled"  # the fixture made it
    assert first[1] in ("AppRole auth method at 'approle/' enabled",
                        "AppRole auth method at 'approle/' already enabled")
    for i, role in enumerate(ROLES):
        assert first[2 + i] == f"policy partnercerts-{role} written"  # the last test wrote them for its own mount
        assert first[5 + i] in (f"approle partnercerts-{role} written", f"approle partnercerts-{role} unchanged")
    root = bao.client()
    ids = {line.split()[0]: line.split()[2] for line in first[8:]}
    assert ids == {f"partnercerts-{r}": root.auth.approle.read_role_id(f"partnercerts-{r}")["data"]["role_id"]
                   for r in ROLES}
    second = bootstrap(cli, mount).out.splitlines()
    assert second == [f"KV v2 mount '{mount}' already enabled", "AppRole auth method at 'approle/' already enabled"] + [
        f"policy partnercerts-{r} unchanged" for r in ROLES] + [f"approle partnercerts-{r} unchanged" for r in ROLES]
    for role in ROLES:
        name = f"partnercerts-{role}"
        conf = root.auth.approle.read_role(name)["data"]
        assert conf["token_policies"] == [name]
        assert (conf["token_ttl"], conf["token_max_ttl"], conf["secret_id_ttl"]) == (3600, 4 * 3600, 0)
        text = root.sys.read_acl_policy(name)["data"]["policy"]
        assert f'"{mount}/metadata/{P}/' in text and f'path "sys/internal/ui/mounts/{mount}"' in text
        assert "{{" not in text


def test_policies_follow_a_non_default_mount_and_prefix(cli, bao):
    root = bao.client()
    other = "kv" + uuid.uuid4().hex[:8]
    try:
        out = bootstrap(cli, other, PARTNERCERTS_PREFIX="team/certs").out
        assert f"KV v2 mount '{other}' enabled" in out
        rot = root.sys.read_acl_policy("partnercerts-rotator")["data"]["policy"]
        dep = root.sys.read_acl_policy("partnercerts-deployer")["data"]["policy"]
        aud = root.sys.read_acl_policy("partnercerts-auditor")["data"]["policy"]
        assert f'path "{other}/data/team/certs/*"' in rot and f'path "{other}/destroy/team/certs/*"' in rot
        assert f'path "{other}/data/team/certs/+/apps/+/current"' in dep
        assert f'path "{other}/metadata/team/certs/*"' in aud and f'"sys/internal/ui/mounts/{other}"' in aud
        assert all(f"/{P}/" not in text for text in (rot, dep, aud))  # no trace of the default prefix
        r = cli("vault.bootstrap", ok=False, env={"PARTNERCERTS_KV_MOUNT": other, "PARTNERCERTS_PREFIX": 'x"y'})
        assert r.rc == 2 and "cannot be written into a Vault policy" in r.err and r.out == ""
    finally:
        root.sys.disable_secrets_engine(other)


def test_bootstrap_with_a_role_token_is_denied_in_one_line(cli, mount, roles):
    r = cli("vault.bootstrap", ok=False, env=roles["auditor"])
    assert r.rc == 4 and "denied" in r.err and "operator token" in r.err and r.err.count("\n") == 1


# -- rotator ---------------------------------------------------------------------------------
def test_rotator_rotates_but_can_never_delete_destroy_or_manage_vault(cli, bao, mount, raw, roles):
    env = roles["rotator"]
    first = cli("rotate", "--no-deploy", env=env)
    assert first.out.count("signed by the sandbox authority and imported") == 2
    assert {r["state"] for r in json.loads(cli("status", "--json", env=env).out)} == {"active"}
    key = raw.read(f"{CRED}/current")["data"]["key_pem"]
    cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--force", env=env)
    pend = raw.read(f"{CRED}/pending")["data"]
    assert pend["state"] == "pending" and pend["key_pem"] != key
    before = raw.snapshot()
    t = login(cli, bao.addr, env)
    path = f"{P}/{CRED}/current"
    denied(kv(t).delete_latest_version_of_secret, path, mount_point=mount)
    denied(kv(t).delete_secret_versions, path, versions=[1], mount_point=mount)
    denied(kv(t).undelete_secret_versions, path, versions=[1], mount_point=mount)
    denied(kv(t).destroy_secret_versions, path, versions=[1], mount_point=mount)
    denied(kv(t).delete_metadata_and_all_versions, path, mount_point=mount)
    denied(kv(t).update_metadata, path, delete_version_after="1s", mount_point=mount)
    denied(t.sys.list_acl_policies)
    denied(t.sys.read_acl_policy, "partnercerts-rotator")
    denied(t.sys.create_or_update_acl_policy, "partnercerts-rotator", 'path "*" { capabilities = ["sudo"] }')
    denied(t.sys.list_mounted_secrets_engines)
    denied(t.auth.approle.generate_secret_id, "partnercerts-rotator")
    denied(kv(t).create_or_update_secret, "elsewhere", secret={"x": "1"}, mount_point=mount)  # outside the prefix
    assert raw.snapshot() == before


# -- auditor ---------------------------------------------------------------------------------
def test_auditor_runs_status_and_reads_no_data(cli, bao, mount, raw, rotated, roles):
    env = roles["auditor"]
    rows = {r["app"]: r for r in json.loads(cli("status", "--json", env=env).out)}
    assert rows["big"]["state"] == "active" and not rows["big"]["pending_since"]
    assert rows["fleet"]["serial"] == rotated["serial"] and rows["fleet"]["pending_since"]  # a renewal under way
    assert all(r["client_id"] and r["days_left"] == 364 for r in rows.values())
    before = raw.snapshot()
    a = login(cli, bao.addr, env)
    for path in (f"{CRED}/current", f"{CRED}/pending", "MZP654321/account", f"{CRED}/history/{rotated['serial']}",
                 f"{CRED}/hosts", "sandbox/authority"):
        denied(read, a, mount, path)
    denied(a.adapter.get, f"/v1/{mount}/subkeys/{P}/{CRED}/current")
    assert kv(a).read_secret_metadata(f"{P}/{IDX}", mount_point=mount)["data"]["custom_metadata"]["serial"]
    # The index folder, listed with every entry's metadata in one request (OpenBao's detailed listing)...
    listed = a.adapter.get(f"/v1/{mount}/detailed-metadata/{P}/index/?list=true")["data"]
    assert listed["key_info"]["MZP654321.fleet"]["custom_metadata"]["serial"] == rotated["serial"]
    # ...and no other folder: there, metadata of records the auditor may not read would show.
    denied(a.adapter.get, f"/v1/{mount}/detailed-metadata/{P}/MZP654321/apps/fleet/?list=true")
    assert "MZP654321/" in kv(a).list_secrets(P, mount_point=mount)["data"]["keys"]
    denied(kv(a).create_or_update_secret, f"{P}/{CRED}/current", secret={"x": "1"}, mount_point=mount)
    denied(kv(a).create_or_update_secret, f"{P}/new", secret={"x": "1"}, mount_point=mount)
    denied(kv(a).update_metadata, f"{P}/{CRED}/current", custom_metadata={"serial": "x"}, mount_point=mount)
    denied(kv(a).update_metadata, f"{P}/{IDX}", custom_metadata={"serial": "x"}, mount_point=mount)
    denied(kv(a).delete_metadata_and_all_versions, f"{P}/{CRED}/current", mount_point=mount)
    r = cli("account", "--mzp", "MZP654321", input="another password\n", ok=False, env=env)
    assert r.rc == 4 and "denied" in r.err
    assert raw.snapshot() == before


# -- deployer --------------------------------------------------------------------------------
def test_deployer_reads_current_and_account_writes_hosts_and_nothing_else(cli, bao, mount, raw, rotated, roles):
    env = roles["deployer"]
    d = login(cli, bao.addr, env)
    cur = read(d, mount, f"{CRED}/current")
    assert cur["data"]["key_pem"] == rotated["key_pem"]
    assert read(d, mount, "MZP654321/account")["data"]["password"]
    # The latest version only: earlier versions of current hold earlier keys.
    denied(read, d, mount, f"{CRED}/current", version=1)
    for path in (f"{CRED}/pending", f"{CRED}/history/{rotated['serial']}", "sandbox/authority",
                 "MZP654321/apps/big/pending"):
        denied(read, d, mount, path)
    denied(kv(d).list_secrets, P, mount_point=mount)
    denied(kv(d).create_or_update_secret, f"{P}/{CRED}/current", secret=cur["data"], cas=cur["metadata"]["version"],
           mount_point=mount)
    denied(kv(d).create_or_update_secret, f"{P}/MZP654321/account", secret={"password": "x"}, cas=1, mount_point=mount)
    denied(kv(d).delete_latest_version_of_secret, f"{P}/{CRED}/current", mount_point=mount)
    report = {"hosts": {"web1": {"in_sync": True, "serial": rotated["serial"],
                                 "fingerprint_sha256": rotated["fingerprint_sha256"], "drift": []}},
              "checked_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    kv(d).create_or_update_secret(f"{P}/{CRED}/hosts", secret=report, cas=0, mount_point=mount)
    assert raw.read(f"{CRED}/hosts")["data"] == report
    # The index (custom metadata of index/MZP.app): custom_metadata only, never the version settings.
    meta_url = f"/v1/{mount}/metadata/{P}/{IDX}"
    index = raw.index(CRED)
    d.adapter.post(meta_url, json={"custom_metadata": {**index, "hosts_total": "1", "hosts_in_sync": "1"}})
    assert raw.index(CRED)["hosts_total"] == "1"
    for url in (meta_url, f"/v1/{mount}/metadata/{P}/{CRED}/current"):
        denied(d.adapter.post, url, json={"custom_metadata": index, "max_versions": 1})
        denied(d.adapter.post, url, json={"delete_version_after": "1s"})
    assert raw.meta(f"{CRED}/current")["max_versions"] == 1000
    # The deployer lists nothing, not even the index folder.
    denied(d.adapter.get, f"/v1/{mount}/detailed-metadata/{P}/index/?list=true")
    # The CLI as the deployer: csr needs the pending record, so it stops at Vault's refusal, changing nothing.
    before = raw.snapshot()
    for args in (["csr", "--mzp", "MZP654321", "--app", "fleet"],
                 ["csr", "--mzp", "MZP654321", "--app", "big", "--force"]):
        r = cli(*args, ok=False, env=env)
        assert r.rc == 4 and r.err.count("\n") == 1 and "denied" in r.err and "Vault at" in r.err, r.err
    assert raw.snapshot() == before


def test_deployer_deploys_and_verifies_a_host(cli, raw, rotated, roles, inventory, tmp_path):
    dest = tmp_path / "h1" / "fleet"
    (inventory / "hosts.yml").write_text(f"""all:
  hosts:
    h1:
      ansible_connection: local
      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
      partnercerts_deploy_credentials:
        - mzp: MZP654321
          app: fleet
          dest: {dest}
""")
    env = roles["deployer"]
    cli("deploy", env=env)
    assert (dest / "current" / "client.key").read_text() == rotated["key_pem"]
    assert raw.read(f"{CRED}/hosts")["data"]["hosts"]["h1"]["in_sync"] is True
    assert "failed=0" in cli("verify", env=env).out


def test_deployer_records_hosts_and_refreshes_the_index(env, bao, mount, raw, rotated, roles):
    from partnercerts import inventory
    from partnercerts.hostreports import Checked
    from partnercerts.settings import Settings
    from partnercerts.store import Store
    from partnercerts.toolkit import Toolkit
    from partnercerts.vault import connect

    e = {**env, **roles["deployer"]}
    settings = Settings.from_env(e)
    tk = Toolkit(settings, inventory.load(settings.inventory), Store(connect(settings, e), settings))
    pending_since = raw.index(CRED)["pending_since"]
    report = Checked(in_sync=True, serial=rotated["serial"], fingerprint_sha256=rotated["fingerprint_sha256"])
    index = tk.hosts.record("MZP654321", "fleet", {"web1": report}, {"web1"}, dt.datetime.now(dt.timezone.utc))
    assert (index.hosts_total, index.hosts_in_sync) == ("1", "1")
    custom = raw.index(CRED)
    assert custom["pending_since"] == pending_since  # kept from the index, not read from pending
    assert custom["hosts_in_sync"] == "1" and raw.meta(f"{CRED}/current")["max_versions"] == 1000


# -- secret IDs --------------------------------------------------------------------------------
def test_secret_id_to_a_0600_file_prints_only_its_path(cli, bao, mount, roles, tmp_path):
    out = tmp_path / "auditor.env"
    r = cli("vault.secret-id", "--role", "auditor", "--out", str(out))
    assert r.out.strip() == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["VAULT_ROLE_ID", "VAULT_SECRET_ID"]
    pairs = dict(line.split("=", 1) for line in lines)
    assert pairs["VAULT_SECRET_ID"] not in r.text and pairs["VAULT_ROLE_ID"] not in r.text
    cli.secrets.append(pairs["VAULT_SECRET_ID"])
    assert pairs["VAULT_ROLE_ID"] == bao.client().auth.approle.read_role_id("partnercerts-auditor")["data"]["role_id"]
    cli("status", env={"VAULT_TOKEN": "", **pairs})  # the file is a working login
    # Again onto our own file: replaced, still 0600, a new secret ID.
    os.chmod(out, 0o644)
    cli("vault.secret-id", "--role", "auditor", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert again["VAULT_SECRET_ID"] != pairs["VAULT_SECRET_ID"]
    cli.secrets.append(again["VAULT_SECRET_ID"])
    # Someone else's file, a symlink: refused, untouched.
    theirs = tmp_path / "theirs.env"
    theirs.write_text("keep\n")
    os.chown(theirs, 65534, 65534)
    link = tmp_path / "link.env"
    link.symlink_to(out)
    for target in (theirs, link):
        r = cli("vault.secret-id", "--role", "auditor", "--out", str(target), ok=False)
        assert r.rc == 2 and "refusing to write a secret" in r.err and r.out == ""
    assert theirs.read_text() == "keep\n" and dict(
        line.split("=", 1) for line in out.read_text().splitlines()) == again
    r = cli("vault.secret-id", "--role", "admin", ok=False)
    assert r.rc == 2 and "rotator, deployer, auditor" in r.err


# -- embedded mode ---------------------------------------------------------------------------
@pytest.fixture
def embedded_cli(env, tmp_path):
    e = {k: v for k, v in env.items() if not k.startswith("VAULT_") and k != "PARTNERCERTS_KV_MOUNT"}
    e["PARTNERCERTS_EMBEDDED_PORT"] = str(free_port())
    c = Cli(e, tmp_path)
    yield c
    c("vault.down", ok=False)


def test_bootstrap_on_the_embedded_server(embedded_cli, tmp_path):
    cli = embedded_cli
    first = cli("vault.bootstrap").out
    cli.secrets.append((tmp_path / "state" / "vault" / "root-token").read_text().strip())
    assert "KV v2 mount 'secret' already enabled" in first and "AppRole auth method at 'approle/' enabled" in first
    assert first.count(" written") == 6
    second = cli("vault.bootstrap").out
    assert "written" not in second and second.count("unchanged") == 6
    pairs = dict(line.split("=", 1) for line in cli("vault.secret-id", "--role", "auditor").out.splitlines())
    cli.secrets.append(pairs["VAULT_SECRET_ID"])
    addr = f"http://127.0.0.1:{cli.env['PARTNERCERTS_EMBEDDED_PORT']}"
    a = login(cli, addr, pairs)
    assert a.auth.token.lookup_self()["data"]["policies"] == ["default", "partnercerts-auditor"]
    # The auditor's token works against the embedded server through the standard environment.
    cli("rotate", "--no-deploy")
    rows = json.loads(cli("status", "--json", env={"VAULT_ADDR": addr, "VAULT_TOKEN": "", **pairs}).out)
    assert {r["state"] for r in rows} == {"active"}
    denied(read, a, "secret", f"{CRED}/current")
