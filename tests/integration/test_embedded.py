"""The embedded workstation OpenBao: started on demand, initialised, unsealed, persistent across restarts."""
import json
import stat
import subprocess

import pytest

from tests.conftest import ROOT, Cli, free_port


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
