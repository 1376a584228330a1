"""Who holds a local port, and whether a pid is one of this toolkit's servers (the embedded OpenBao, the
sandbox API) of a given state directory: Linux /proc, standard library only. The servers of a state
directory never answer for another's."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import UserError

SANDBOX_MODULE = "partnercerts.sandbox.api"  # what the sandbox API's command line runs (python -m)

T = TypeVar("T")


def _proc_args(pid: int) -> list[str] | None:
    """The command line of a live (not zombie) process, None when it is gone or unreadable."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    return [a.decode("utf-8", "replace") for a in cmdline if a]


def _proc_env(pid: int, name: str) -> str | None:
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key.decode("utf-8", "replace") == name:
                return value.decode("utf-8", "replace")
    except OSError:
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def embedded_config_arg(config: Path) -> str:
    return f"-config={config}"


def is_embedded(pid: int, config: Path) -> bool:
    """A live `bao server` started with this state directory's config file (a recycled pid is not taken for it)."""
    if not Path("/proc/self").is_dir():  # no /proc: the pid is alive, trust the pidfile
        return _alive(pid)
    args = _proc_args(pid)
    return args is not None and embedded_config_arg(config) in args


def is_sandbox(pid: int, state_dir: Path | None = None) -> bool:
    """A live (not zombie) process running the sandbox API (of this state directory, when one is given)."""
    if not Path("/proc/self").is_dir():  # no /proc: the pid is alive, trust the pidfile
        return _alive(pid)
    args = _proc_args(pid)
    if args is None or SANDBOX_MODULE not in args:
        return False
    return state_dir is None or _proc_env(pid, "PARTNERCERTS_STATE_DIR") == str(state_dir)


class Holder:
    """The process that listens on a port, as far as this user can tell, and what it is."""

    def __init__(self, pid: int | None, what: str, state_dir: Path | None = None, deleted: bool = False):
        self.pid, self.what, self.state_dir, self.deleted = pid, what, state_dir, deleted

    def __str__(self) -> str:
        if self.state_dir is None:
            return self.what
        return (f"{self.what} of {self.state_dir} ({'deleted, ' if self.deleted else ''}"
                f"pid {self.pid})")

    def fix(self, down_task: str) -> str:
        """How to stop it: the other state directory's own task, or kill when that directory is gone."""
        if self.pid is not None and (self.deleted or self.state_dir is None):
            return f"stop it with: kill {self.pid}"
        if self.state_dir is not None:
            return f"stop it with: PARTNERCERTS_STATE_DIR={self.state_dir} scripts/inv {down_task}"
        return "stop it"


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening socket on `port` (any address)."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not wanted:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in wanted:
                return True
        except OSError:
            continue
    return False


def wait_serving(proc: subprocess.Popen, port: int, ready: Callable[[], T | None], seconds: float) -> T | None:
    """Wait until `proc` itself serves `port`: `ready()`'s answer, once it answers and the listener is `proc`.

    A server that answers there but is not `proc` (another checkout's, started at the same moment, that won the
    port) is never taken for ours. None when `proc` exits first (it lost the port, or failed); TimeoutError when
    it neither serves nor exits in time."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            return None
        answer = ready()
        if answer is not None and listens(proc.pid, port):
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {proc.pid} does not serve port {port} after {seconds:g} s")
        time.sleep(0.1)


def _deleted(path: Path, cwd_of: int) -> bool:
    try:
        if os.readlink(f"/proc/{cwd_of}/cwd").endswith(" (deleted)"):
            return True
    except OSError:
        pass
    return not path.is_dir()


def port_holder(port: int) -> Holder | None:
    """Who listens on 127.0.0.1:port (Linux /proc; None when nobody, or it cannot be told)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) not in wanted:
                    continue
            except OSError:
                continue
            return _describe(int(proc.name))
    return Holder(None, "a process of another user")


def _describe(pid: int) -> Holder:
    args = _proc_args(pid) or []
    for arg in args:
        if arg.startswith("-config=") and Path(arg[len("-config="):]).parent.name == "vault":
            state = Path(arg[len("-config="):]).parent.parent
            return Holder(pid, "the embedded OpenBao", state, _deleted(state, pid))
    if SANDBOX_MODULE in args:
        raw = _proc_env(pid, "PARTNERCERTS_STATE_DIR")
        if raw:
            return Holder(pid, "the sandbox API", Path(raw), _deleted(Path(raw), pid))
        return Holder(pid, f"a sandbox API (pid {pid})")
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = "?"
    return Holder(pid, f"pid {pid} ({name})")


def bindable(addrs: list[str], port: int) -> OSError | None:
    """None when every address can listen on the port, else the error."""
    for addr in addrs:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            socket.create_server((addr, port), family=family).close()
        except OSError as exc:
            return exc
    return None


def free_port(addrs: list[str], start: int, width: int = 1) -> int:
    """The first port from `start` up (step `width`) whose `width` consecutive ports are free on every address."""
    port = start
    for _ in range(200):
        if port + width - 1 <= 65535 and all(bindable(addrs, port + i) is None for i in range(width)):
            return port
        port += width
    raise UserError(f"no free port on {', '.join(addrs)} from {start} up; free one, or set it explicitly")
