"""The sandbox API in the background: its pidfile, start (waiting until it accepts), stop and status.

Only the standard library here: the server module (pyOpenSSL, cryptography) is imported when a
sandbox command needs it, not when any task starts.
"""
from __future__ import annotations

import datetime as dt
import functools
import json as jsonlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import Remedy, UserError
from ..servers import SANDBOX_MODULE, bindable, free_port, is_sandbox, port_holder, wait_serving
from ..settings import DEFAULT_SANDBOX_API_PORT, ROOT, Settings, sandbox_port_file

PORT_ENV = "PARTNERCERTS_SANDBOX_API_PORT"
DEFAULT_PORT = DEFAULT_SANDBOX_API_PORT
MODULE = SANDBOX_MODULE


def fmt_host(addr: str) -> str:
    from .api import fmt_host
    return fmt_host(addr)


def parse_address(addr: str):
    from .api import parse_address
    return parse_address(addr)


START_SECONDS = 60  # connecting to Vault may first start the embedded OpenBao


def parse_port(raw, what: str) -> int:
    try:
        value = int(str(raw))
    except ValueError:
        raise UserError(f"{what}={raw!r} is not a port number; use e.g. {DEFAULT_PORT}") from None
    if not 1 <= value <= 65535:
        raise UserError(f"{what}={value} is not a port number (1-65535); use e.g. {DEFAULT_PORT}")
    return value


class Daemon:
    """The background server's files: <state_dir>/sandbox-api/{server.pid, server.json, server.log, port}."""

    def __init__(self, settings: Settings):
        self.state_dir = settings.state_dir
        self.dir = settings.state_dir / "sandbox-api"
        self.pid_file = self.dir / "server.pid"
        self.info_file = self.dir / "server.json"
        self.log_file = self.dir / "server.log"
        self.port_file = sandbox_port_file(settings.state_dir)

    def pid(self) -> int | None:
        """The pid of this state directory's running server, None when it is not running (a stale pidfile, or
        one naming another state directory's server, is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_sandbox(pid, self.state_dir) else None

    def info(self) -> dict:
        try:
            return jsonlib.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}

    def clear(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.info_file.unlink(missing_ok=True)


def _urls(bind: list[str], port: int) -> list[str]:
    from .api import BASE_PATH
    return [f"https://{fmt_host(a)}:{port}{BASE_PATH}" for a in bind]


def _probe_host(addr: str) -> str:
    ip = parse_address(addr)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return str(ip)


def _accepts(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((_probe_host(addr), port), timeout=0.5):
            return True
    except OSError:
        return False


def _answers(addr: str, port: int) -> bool | None:
    return True if _accepts(addr, port) else None


def _check_free(settings: Settings, bind: list[str], port: int, pinned: bool) -> int:
    """The port to listen on: `port` when it is free; else, unless pinned, a free one (said on stderr)."""
    exc = bindable(bind, port)
    if exc is None:
        return port
    addr = next((a for a in bind if bindable([a], port) is not None), bind[0])
    holder = port_holder(port)
    if pinned:
        held = f"; held by {holder}, {holder.fix('sandbox.down')}" if holder else ""
        raise UserError(f"cannot listen on {fmt_host(addr)}:{port} ({exc.strerror or exc}{held}); choose another "
                        f"--port (or set {PORT_ENV}) or --bind address") from None
    new = free_port(bind, port + 1)
    orphan = f" ({holder.fix('sandbox.down')})" if holder and holder.deleted else ""
    print(f"note: port {port} is held by {holder or 'another process'}{orphan}; the sandbox API of "
          f"{settings.state_dir} uses port {new} instead (recorded in {sandbox_port_file(settings.state_dir)})",
          file=sys.stderr)
    return new


def _last_error(log_file: Path, offset: int) -> str:
    try:
        with open(log_file, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1].removeprefix("error:").strip() if errors else ""


def _child_env(settings: Settings) -> dict:
    """The caller's environment with every relative path made absolute: the server runs from the repository."""
    env = dict(os.environ)
    env["PARTNERCERTS_STATE_DIR"] = str(settings.state_dir)
    env["PARTNERCERTS_INVENTORY"] = str(settings.inventory)
    if env.get("VAULT_CACERT"):
        env["VAULT_CACERT"] = str(Path(env["VAULT_CACERT"]).absolute())
    if env.get("PARTNERCERTS_CA_FILE"):
        env["PARTNERCERTS_CA_FILE"] = str(Path(env["PARTNERCERTS_CA_FILE"]).absolute())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def start(settings: Settings, port: int, addrs: list[str], pinned: bool = True) -> list[str]:
    """Start the server in the background unless it already runs there; returns the lines to print.

    A busy port is an error when pinned (--port, PARTNERCERTS_SANDBOX_API_PORT), else another one is taken;
    the port it listens on is recorded in <state_dir>/sandbox-api/port either way."""
    daemon = Daemon(settings)
    running = daemon.pid()
    if running:
        info = daemon.info()
        if info.get("port") != port or info.get("bind") != addrs:
            raise UserError(f"the sandbox API is already running (pid {running}) on "
                            f"{', '.join(_urls(info.get('bind') or [], info.get('port') or 0))}; "
                            "stop it first to start it elsewhere", remedy=Remedy.SANDBOX_DOWN)
        return [f"already running (pid {running}): {', '.join(_urls(addrs, port))}"]
    for _ in range(5):
        port = _check_free(settings, addrs, port, pinned)
        proc, offset = _spawn(settings, daemon, port, addrs)
        try:
            served = wait_serving(proc, port, functools.partial(_answers, addrs[0], port), START_SECONDS)
        except TimeoutError:
            proc.terminate()
            daemon.clear()
            raise UserError(f"the sandbox API did not accept connections on port {port} within {START_SECONDS} s "
                            f"(see {daemon.log_file})") from None
        if served:
            break
        daemon.clear()
        # Lost the port to a server that took it at the same moment (another checkout's): move on, unless pinned.
        if pinned or bindable(addrs, port) is None:
            why = _last_error(daemon.log_file, offset) or f"it exited with status {proc.returncode}"
            raise UserError(f"the sandbox API did not start: {why} (see {daemon.log_file})")
    else:
        raise UserError(f"the sandbox API did not start: every port tried was taken (see {daemon.log_file})")
    daemon.port_file.write_text(f"{port}\n")
    from .api import BASE_PATH
    return [f"sandbox API up (pid {proc.pid}): {', '.join(_urls(addrs, port))}",
            f"  GET {BASE_PATH}/fleets?client_id=<Client ID> with the credential's certificate and key, "
            "Basic auth MZP:password; verify the server with the sandbox CA (the partner's ca.crt)",
            f"  log: {daemon.log_file}"]


def _spawn(settings: Settings, daemon: Daemon, port: int, addrs: list[str]) -> tuple[subprocess.Popen, int]:
    """The server process, its pid and port recorded; with the log offset its errors start at."""
    daemon.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(daemon.dir, 0o700)
    with open(daemon.log_file, "ab") as log:
        offset = log.tell()
        os.chmod(daemon.log_file, 0o600)
        proc = subprocess.Popen([sys.executable, "-m", MODULE, "--port", str(port), "--bind", ",".join(addrs)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd=ROOT, env=_child_env(settings))
    daemon.pid_file.write_text(f"{proc.pid}\n")
    daemon.info_file.write_text(jsonlib.dumps({
        "pid": proc.pid, "port": port, "bind": addrs,
        "started_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}) + "\n")
    return proc, offset


def ensure_running(settings: Settings) -> None:
    """For inventories with `partnercerts_sandbox_api: true`: have the API up before hosts call it."""
    daemon = Daemon(settings)
    running = daemon.pid()
    if running is None:
        for line in start(settings, settings.sandbox_api_port, ["127.0.0.1"],
                          pinned=settings.sandbox_api_port_pinned)[:1]:
            print(line, file=sys.stderr)
        return
    port = daemon.info().get("port")
    if settings.sandbox_api_port_pinned and port != settings.sandbox_api_port:
        raise UserError(f"the sandbox API of {settings.state_dir} runs on port {port} (pid {running}), not on "
                        f"{PORT_ENV}={settings.sandbox_api_port}; stop it first to move it",
                        remedy=Remedy.SANDBOX_DOWN)


def stop(settings: Settings) -> bool:
    """Stop the background server; False when it was not running."""
    daemon = Daemon(settings)
    pid = daemon.pid()
    if pid is None:
        daemon.clear()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while is_sandbox(pid, daemon.state_dir):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    daemon.clear()
    return True


def status(settings: Settings) -> dict:
    """Whether this state directory's background server runs, its pid, URLs, start time and log file; when it
    does not, who else holds its port."""
    daemon = Daemon(settings)
    pid = daemon.pid()
    info = daemon.info() if pid else {}
    holder = None if pid or bindable(["127.0.0.1"], settings.sandbox_api_port) is None \
        else port_holder(settings.sandbox_api_port)
    return {
        "running": pid is not None,
        "pid": pid,
        "urls": _urls(info.get("bind") or [], info.get("port") or 0) if pid else [],
        "started_at": info.get("started_at") if pid else None,
        "log": str(daemon.log_file),
        "state_dir": str(settings.state_dir),
        "port": info.get("port") if pid else settings.sandbox_api_port,
        "port_held_by": str(holder) if holder else None,
    }
