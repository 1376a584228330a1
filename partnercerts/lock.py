"""A rotation lock kept in Vault itself, so it holds across control hosts: check-and-set on a
lock record with an expiry. Nothing is deleted: releasing writes a released version.

The record names the process that holds it (host, boot, pid and the pid's start time): a lock
left by a run that died on this same machine (SIGKILL, power loss, Vault gone at release time)
is taken over at once instead of blocking every run until it expires."""
from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import Conflict
from .store import Store


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def whoami(what: str, pid: int | None = None) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {pid or os.getpid()} ({what})"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """The process's start time (clock ticks since boot), '' when it does not exist or has exited (a
    zombie): with the boot id it names one process, so a recycled pid is not mistaken for the holder."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def owner(pid: int | None = None) -> dict:
    """What identifies the process holding the lock: the run's own, or (rotate.yml) ansible-playbook's."""
    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": str(pid), "pid_started": _started(pid)}


def holder_is_dead(data: dict) -> bool:
    """The holder ran on this machine, since its last boot, and its process is gone."""
    if not data.get("pid") or not data.get("boot_id") or not data.get("pid_started"):
        return False  # an older record, or another kind of holder: only its expiry frees it
    if data.get("host") != socket.gethostname() or data["boot_id"] != _boot_id():
        return False  # another control host (or before a reboot): cannot tell, wait for the expiry
    try:
        return _started(int(data["pid"])) != data["pid_started"]
    except ValueError:
        return False


@dataclass
class Held:
    holder: str
    acquired_at: str
    expires_at: str


class Lock:
    def __init__(self, store: Store, name: str = "rotate", ttl: dt.timedelta = dt.timedelta(minutes=30)):
        self.store, self.path, self.ttl = store, store.lock_path(name), ttl
        self.token = ""
        self.version = 0
        self.took_over = ""  # holder of a dead run's lock that acquire() took over

    def acquire(self, holder: str, now: dt.datetime, pid: int | None = None) -> Held | None:
        """Take the lock; return None when taken, or who holds it (and until when) otherwise.
        `pid`: the process whose life the lock spans (default: this one)."""
        for _ in range(3):
            rec = self.store.read(self.path)
            if rec and rec.data.get("state") == "held" and rec.data.get("expires_at", "") > iso(now):
                if not holder_is_dead(rec.data):
                    return Held(rec.data.get("holder", "?"), rec.data.get("acquired_at", "?"), rec.data["expires_at"])
                self.took_over = rec.data.get("holder", "?")
            token = secrets.token_hex(16)
            data = {"state": "held", "holder": holder, "token": token, "acquired_at": iso(now),
                    "expires_at": iso(now + self.ttl), **owner(pid)}
            try:
                self.version = self.store.write(self.path, data, cas=rec.version if rec else 0)
            except Conflict:
                self.took_over = ""
                continue  # someone else moved first: look again
            self.token = token
            return None
        rec = self.store.read(self.path)
        if rec is None:
            return Held("?", "?", "?")
        return Held(rec.data.get("holder", "?"), rec.data.get("acquired_at", "?"), rec.data.get("expires_at", "?"))

    def adopt(self, token: str) -> bool:
        """Continue holding a lock taken earlier (e.g. by the first play of rotate.yml)."""
        rec = self.store.read(self.path)
        if rec and rec.data.get("state") == "held" and rec.data.get("token") == token:
            self.token, self.version = token, rec.version
            return True
        return False

    def release(self, now: dt.datetime) -> None:
        if not self.token:
            return
        rec = self.store.read(self.path)
        if rec and rec.data.get("token") == self.token:
            try:
                self.store.write(self.path, {"state": "released", "holder": rec.data.get("holder", ""),
                                             "released_at": iso(now)}, cas=rec.version)
            except Conflict:
                pass  # expired and taken by another run meanwhile: theirs now
        self.token = ""
