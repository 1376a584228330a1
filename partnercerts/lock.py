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
from typing import TypedDict

from .errors import Conflict
from .store import LockRecord, Store, iso


def person() -> str:
    """user@host of this process, for the records that say who acted."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def whoami(what: str, pid: int | None = None) -> str:
    return f"{person()} pid {pid or os.getpid()} ({what})"


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


class Owner(TypedDict):
    """The LockRecord fields that name the process holding the lock."""

    host: str
    boot_id: str
    pid: str
    pid_started: str


def owner(pid: int | None = None) -> Owner:
    """What identifies the process holding the lock: the run's own, or (rotate.yml) ansible-playbook's."""
    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": str(pid), "pid_started": _started(pid)}


def holder_is_dead(rec: LockRecord) -> bool:
    """The holder ran on this machine, since its last boot, and its process is gone."""
    if not rec.pid or not rec.boot_id or not rec.pid_started:
        return False  # an older record, or another kind of holder: only its expiry frees it
    if rec.host != socket.gethostname() or rec.boot_id != _boot_id():
        return False  # another control host (or before a reboot): cannot tell, wait for the expiry
    try:
        return _started(int(rec.pid)) != rec.pid_started
    except ValueError:
        return False


@dataclass
class Held:
    holder: str
    acquired_at: str
    expires_at: str

    @classmethod
    def of(cls, rec: LockRecord) -> "Held":
        return cls(rec.holder or "?", rec.acquired_at or "?", rec.expires_at or "?")


class Lock:
    def __init__(self, store: Store, name: str = "rotate", ttl: dt.timedelta = dt.timedelta(minutes=30)):
        self.store, self.name, self.ttl = store, name, ttl
        self.token = ""
        self.version = 0
        self.took_over = ""  # holder of a dead run's lock that acquire() took over

    def acquire(self, holder: str, now: dt.datetime, pid: int | None = None) -> Held | None:
        """Take the lock; return None when taken, or who holds it (and until when) otherwise.
        `pid`: the process whose life the lock spans (default: this one)."""
        for _ in range(3):
            found = self.store.lock(self.name)
            if found and found.record.state == "held" and found.record.expires_at > iso(now):
                if not holder_is_dead(found.record):
                    return Held.of(found.record)
                self.took_over = found.record.holder or "?"
            token = secrets.token_hex(16)
            record = LockRecord(state="held", holder=holder, token=token, acquired_at=iso(now),
                                expires_at=iso(now + self.ttl), **owner(pid))
            try:
                self.version = self.store.put_lock(self.name, record, cas=found.version if found else 0)
            except Conflict:
                self.took_over = ""
                continue  # someone else moved first: look again
            self.token = token
            return None
        found = self.store.lock(self.name)
        return Held.of(found.record) if found else Held("?", "?", "?")

    def adopt(self, token: str) -> bool:
        """Continue holding a lock taken earlier (e.g. by the first play of rotate.yml)."""
        found = self.store.lock(self.name)
        if found and found.record.state == "held" and found.record.token == token:
            self.token, self.version = token, found.version
            return True
        return False

    def release(self, now: dt.datetime) -> None:
        if not self.token:
            return
        found = self.store.lock(self.name)
        if found and found.record.token == self.token:
            try:
                self.store.put_lock(self.name, LockRecord(state="released", holder=found.record.holder,
                                                          released_at=iso(now)), cas=found.version)
            except Conflict:
                pass  # expired and taken by another run meanwhile: theirs now
        self.token = ""
