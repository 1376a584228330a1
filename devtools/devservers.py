"""Throwaway local servers shared by the benchmark (devtools/bench.py) and the test suite: an OpenBao
dev server on loopback. (The namespaced sshd hosts are devtools/testhosts.py.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from partnercerts.embedded import bao_binary


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
