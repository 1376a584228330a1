"""Throwaway local servers shared by the benchmark (partnercerts/bench.py) and the test suite:
an OpenBao dev server on loopback, and the loader of scripts/testhosts.py (namespaced sshd hosts).
Never used by the toolkit's own commands."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .embedded import bao_binary
from .settings import ROOT

TESTHOSTS = ROOT / "scripts" / "testhosts.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevBao:
    """`bao server -dev` on a free loopback port, in memory (gone when stopped), its log in `home`."""

    def __init__(self, home: Path, token_prefix: str = "dev-", start_seconds: float = 30):
        import requests
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token_prefix + uuid.uuid4().hex
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "bao.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-root-token-id={self.token}",
                                      f"-dev-listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("OpenBao did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.1)

    def client(self):
        import hvac
        return hvac.Client(url=self.addr, token=self.token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load_testhosts():
    """Import scripts/testhosts.py (scripts/ is not a package) once, as module "testhosts"."""
    mod = sys.modules.get("testhosts")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == TESTHOSTS:
        return mod
    spec = importlib.util.spec_from_file_location("testhosts", TESTHOSTS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["testhosts"] = mod  # dataclasses look their module up while it executes
    spec.loader.exec_module(mod)
    return mod
