"""The embedded workstation OpenBao: started on demand, initialised, unsealed, persistent across restarts."""
import json
import re
import stat
import subprocess

import pytest

from tests.conftest import ROOT, Cli, Result, free_port


@pytest.fixture
def embedded(env, tmp_path):
    e = {k: v for k, v in env.items() if not k.startswith("VAULT_") and k != "PARTNERCERTS_KV_MOUNT"}
    e["PARTNERCERTS_EMBEDDED_PORT"] = str(free_port())
    c = Cli(e, tmp_path)
    yield c, tmp_path / "state" / "vault"
    c("vault.down", ok=False)


def test_rotate_on_a_fresh_state_dir_starts_the_embedded_server(embedded):
    cli, vault_dir = embedded
    first = cli("rotate")
    assert first.out.count("imported") == 2
    for name in ("unseal-key", "root-token"):
        assert stat.S_IMODE((vault_dir / name).stat().st_mode) == 0o600
        cli.secrets.append((vault_dir / name).read_text().strip())
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    assert "nothing to do" in cli("rotate").out
    st = json.loads(cli("vault.status", "--json").out)
    assert st["running"] and st["initialized"] and not st["sealed"]
    assert st["address"].startswith("http://127.0.0.1:")
    # Restart: the server unseals itself from .state and the credentials are still there.
    assert "stopped" in cli("vault.down").out
    assert json.loads(cli("vault.status", "--json").out)["running"] is False
    rows = json.loads(cli("status", "--json").out)
    assert {r["state"] for r in rows} == {"active"}
    # The storage on disk is encrypted: no key in clear anywhere under the state dir.
    found = subprocess.run(["grep", "-rl", "PRIVATE KEY", str(vault_dir.parent)], capture_output=True, text=True)
    assert found.stdout == ""


def test_vault_tasks_refuse_when_vault_addr_is_set(cli):
    r = cli("vault.up", ok=False)
    assert r.rc == 2 and "unset VAULT_ADDR" in r.err


def test_scripts_inv_is_the_entry_point():
    r = subprocess.run([str(ROOT / "scripts" / "inv"), "--list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "rotate" in r.stdout and "vault.bootstrap" in r.stdout
    helped = subprocess.run([str(ROOT / "scripts" / "inv"), "--help", "import-cert"], capture_output=True, text=True)
    for flag in ("--mzp", "--app", "--cert", "--ca", "--client-id"):
        assert flag in helped.stdout
    assert "Undocumented" not in helped.stdout


def test_fresh_clone_rotate_deploys_to_both_local_hosts_with_a_smoke_call(env, tmp_path):
    """The README's first command on the shipped inventory: embedded Vault, sandbox authority and API, two hosts."""
    e = {k: v for k, v in env.items() if not k.startswith("VAULT_") and k not in ("PARTNERCERTS_KV_MOUNT",
                                                                                "PARTNERCERTS_INVENTORY")}
    e.update(PARTNERCERTS_EMBEDDED_PORT=str(free_port()), PARTNERCERTS_SANDBOX_API_PORT=str(free_port()))
    cli = Cli(e, tmp_path)
    state = tmp_path / "state"
    try:
        r = cli("rotate")
        assert "done: 2 credential(s) changed, 2 deployed and verified" in r.out
        smoke = re.findall(r"TASK \[partnercerts\.psa\.partnercerts_deploy : Smoke call with all three credentials\] "
                           r"\**\n((?:\w+: \[[\w-]+\]\n)+)", r.out)
        assert smoke and all(line.startswith("ok:") for block in smoke for line in block.splitlines())
        assert sum(len(block.splitlines()) for block in smoke) == 4 and "fatal" not in r.out
        rows = json.loads(cli("status", "--json").out)
        assert [(x["mzp"], x["app"], x["state"], x["hosts_in_sync"], x["hosts_total"]) for x in rows] == [
            ("MZP123456", "fleet", "active", 2, 2), ("MZP123456", "telematics", "active", 2, 2)]
        for host in ("local-a", "local-b"):
            for row in rows:
                cur = state / "hosts" / host / f"MZP123456-{row['app']}" / "current"
                serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cur / "client.crt")],
                                        capture_output=True, text=True, check=True).stdout.strip()
                assert serial == f"serial={row['serial']}"
                assert stat.S_IMODE((cur / "client.key").stat().st_mode) == 0o600
        # An independent client with the files of local-a, against the sandbox API the run started.
        cur = state / "hosts" / "local-a" / "MZP123456-fleet" / "current"
        envfile = dict(line.split("=", 1) for line in (cur / "client.env").read_text().splitlines())
        cli.secrets += [envfile["PSA_MZP_PASSWORD"], envfile["PSA_P12_PASSWORD"]]
        curl = subprocess.run(["curl", "-sS", "--cert", str(cur / "client.crt"), "--key", str(cur / "client.key"),
                               "--cacert", str(cur / "ca.crt"), "-u", f"MZP123456:{envfile['PSA_MZP_PASSWORD']}",
                               f"{envfile['PSA_API_URL']}/fleets?client_id={envfile['PSA_CLIENT_ID']}"],
                              capture_output=True, text=True)
        assert curl.returncode == 0 and json.loads(curl.stdout)["mzp"] == "MZP123456", curl.stderr
        again = cli("rotate")
        assert "nothing to do" in again.out and "PLAY" not in again.out
        assert "failed=0" in cli("verify").out
        # The README's standalone playbook commands, as written, from the checkout.
        for argv in (["playbooks/deploy.yml", "--check", "--diff"], ["playbooks/verify.yml"], ["playbooks/rotate.yml"]):
            p = subprocess.run([".venv/bin/ansible-playbook", "-i", "inventories/local", *argv], cwd=ROOT, env=e,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0 and "failed=0" in p.stdout, argv + [p.stdout[-3000:], p.stderr[-2000:]]
            cli.assert_clean(Result(p.returncode, p.stdout, p.stderr))
    finally:
        cli("sandbox.down", ok=False)
        cli("vault.down", ok=False)


def test_the_local_inventory_puts_the_hosts_files_in_the_checkouts_state_dir(tmp_path):
    """Without PARTNERCERTS_STATE_DIR the local hosts' files go to <checkout>/.state, as the core's state, by a
    normalised path (the release module refuses '..'), whichever directory ansible is run from."""
    e = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PARTNERCERTS_")}
    e["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    for cwd, inventory in ((ROOT, "inventories/local"), (tmp_path, str(ROOT / "inventories" / ".." / "inventories"
                                                                           / "local"))):
        p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "-i", inventory, "local-b", "-m", "debug",
                            "-a", "msg={{ partnercerts_deploy_credentials | map(attribute='dest') | join(',') }}"],
                           cwd=cwd, env=e, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        dests = json.loads(p.stdout.split("=>", 1)[1])["msg"].split(",")
        assert dests == [f"{ROOT}/.state/hosts/local-b/MZP123456-fleet",
                         f"{ROOT}/.state/hosts/local-b/MZP123456-telematics"], dests
