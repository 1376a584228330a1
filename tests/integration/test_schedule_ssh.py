"""The scheduled rotation installed on a control host over SSH (a namespaced test host), and its
command run once there with the rotator AppRole from its root-only environment file."""
import json
import re
import socket
import subprocess
import threading
import uuid

import pytest

from tests.conftest import ROOT, Result, free_port


class Forward:
    """Lets the namespaced host reach the test Vault on loopback: gateway:port -> 127.0.0.1:target."""

    def __init__(self, listen: str, target: int):
        self.sock = socket.create_server((listen, free_port()))
        self.addr = f"http://{listen}:{self.sock.getsockname()[1]}"
        self.target = target
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stop = True
        self.sock.close()


@pytest.fixture
def vault_from_hosts(ssh_hosts, bao):
    port = int(bao.addr.rsplit(":", 1)[1])
    fwd = Forward(str(ssh_hosts.subnet.network_address + 1), port)
    yield fwd.addr
    fwd.close()


def test_schedule_installed_over_ssh_runs_rotate_with_the_rotator_approle(ssh_hosts, cli, env, raw, inventory, mount,
                                                                          tmp_path, vault_from_hosts):
    cli("vault.bootstrap")
    creds_file = tmp_path / "rotator.env"
    r = cli("vault.secret-id", "--role", "rotator", "--out", str(creds_file))
    secret_id = dict(line.split("=", 1)
                     for line in creds_file.read_text().splitlines() if "=" in line)["VAULT_SECRET_ID"]
    cli.secrets.append(secret_id)
    assert secret_id not in r.text
    host = ssh_hosts.hosts[0].name
    root = f"/srv/s{uuid.uuid4().hex[:8]}"
    extra = {
        "partnercerts_schedule_hosts": host, "partnercerts_schedule_repo_dir": str(ROOT),
        "partnercerts_schedule_method": "cron", "partnercerts_schedule_cron": "17 5 * * *",
        "partnercerts_schedule_cron_file": f"{root}/cron.d/partnercerts",
        "partnercerts_schedule_env_file": f"{root}/etc/rotate.env",
        "partnercerts_schedule_log_file": f"{root}/log/rotate.log",
        "partnercerts_schedule_credentials_file": str(creds_file),
        "partnercerts_schedule_environment": {"VAULT_ADDR": vault_from_hosts, "PARTNERCERTS_KV_MOUNT": mount,
                                              "PARTNERCERTS_INVENTORY": str(inventory),
                                              "PARTNERCERTS_STATE_DIR": f"{root}/state"},
    }
    ssh_inv = tmp_path / "ssh-inventory.yml"
    ssh_inv.write_text(ssh_hosts.inventory_text())
    run_env = {k: v for k, v in env.items() if k not in ("VAULT_TOKEN",)}
    run_env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")

    def play(**more):
        p = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(ssh_inv),
                            str(ROOT / "playbooks/schedule.yml"), "-e", json.dumps({**extra, **more})],
                           env=run_env, capture_output=True, text=True, timeout=300)
        cli.assert_clean(Result(p.returncode, p.stdout, p.stderr))
        assert p.returncode == 0, p.stdout[-3000:]
        return p.stdout

    ssh_hosts.run_in_host(host, ["mkdir", "-p", f"{root}/cron.d"])  # what the cron package provides
    try:
        first = play()
        assert re.search(rf"{host}\s+: ok=\d+\s+changed=[1-9]", first)
        cron = ssh_hosts.run_in_host(host, ["cat", f"{root}/cron.d/partnercerts"]).stdout
        line = next(x for x in cron.splitlines() if x.startswith("17 5 * * *"))
        assert f"root {ROOT}/scripts/scheduled-rotate {root}/etc/rotate.env" in line
        st = ssh_hosts.run_in_host(host, ["stat", "-c", "%a %U", f"{root}/etc/rotate.env",
                                          f"{root}/etc"]).stdout.split("\n")
        assert st[:2] == ["600 root", "700 root"]
        assert re.search(rf"{host}\s+: ok=\d+\s+changed=0", play())  # idempotent
        # Run the job's command once on that host, as cron would.
        command = line.split(" root ", 1)[1].split(" >", 1)[0]
        job = ssh_hosts.ssh_command(host, command, timeout=300)
        assert job.returncode == 0, job.stdout + job.stderr
        log = ssh_hosts.run_in_host(host, ["cat", f"{root}/log/rotate.log"]).stdout
        assert "scheduled rotation finished: exit 0" in log and "signed by the sandbox authority" in log
        assert secret_id not in log and "PRIVATE KEY" not in log
        rows = json.loads(cli("status", "--json").out)
        assert {r["state"] for r in rows} == {"active"}
        # A credentials file others could read is refused by the job itself.
        ssh_hosts.run_in_host(host, ["chmod", "644", f"{root}/etc/rotate.env"])
        refused = ssh_hosts.ssh_command(host, command)
        assert refused.returncode == 2 and "must be mode 0600" in refused.stderr
        play(partnercerts_schedule_state="absent")
        assert ssh_hosts.run_in_host(host, ["test", "-e", f"{root}/cron.d/partnercerts"]).returncode != 0
    finally:
        ssh_hosts.run_in_host(host, ["rm", "-rf", root])
