"""A rotation lock kept in Vault itself, so it holds across control hosts: check-and-set on a
lock record with an expiry. Nothing is deleted: releasing writes a released version."""
from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import socket
from dataclasses import dataclass

from .errors import Conflict
from .store import Store


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def whoami(what: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()} ({what})"


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

    def acquire(self, holder: str, now: dt.datetime) -> Held | None:
        """Take the lock; return None when taken, or who holds it (and until when) otherwise."""
        for _ in range(3):
            rec = self.store.read(self.path)
            if rec and rec.data.get("state") == "held" and rec.data.get("expires_at", "") > iso(now):
                return Held(rec.data.get("holder", "?"), rec.data.get("acquired_at", "?"), rec.data["expires_at"])
            token = secrets.token_hex(16)
            data = {"state": "held", "holder": holder, "token": token, "acquired_at": iso(now),
                    "expires_at": iso(now + self.ttl)}
            try:
                self.version = self.store.write(self.path, data, cas=rec.version if rec else 0)
            except Conflict:
                continue  # someone else moved first: look again
            self.token = token
            return None
        rec = self.store.read(self.path)
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
