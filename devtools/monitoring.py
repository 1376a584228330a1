"""Throwaway monitoring servers for the tests of monitoring/ (tests/integration/test_monitoring.py): Debian's
prometheus-node-exporter serving a textfile directory, and a prometheus server scraping it with the alerting
rules loaded. Each listens on a free loopback port, keeps its config, data and log under its own `home`, reads
nothing from /etc, and runs as a child process in its own process group; `stop()` ends that group.
(scripts/install-system-deps installs both packages and leaves their system services off.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devtools.devservers import free_port


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)),
                                           None)
        if found:
            return found
    raise FileNotFoundError(f"{names[0]} not installed: run scripts/install-system-deps (as root)")


def promtool() -> str:
    """The path of promtool (Debian's prometheus package ships it)."""
    return _binary("promtool")


def _session():
    import requests
    session = requests.Session()
    session.trust_env = False  # loopback only: never through HTTP(S)_PROXY from the environment
    return session


class _Server:
    """A child process in its own group, its output in `home/<name>.log`, ready when `url + ready_path` is 200."""

    name = "server"
    ready_path = "/"
    url = ""  # set by the subclass before __init__ waits on it

    def __init__(self, home: Path, args: list[str], start_seconds: float):
        self.home = home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / f"{self.name}.log"
        self._log = open(self.log_path, "wb")
        self._http = _session()
        self.proc: subprocess.Popen | None = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.home,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.home)})
        self._wait_ready(start_seconds)

    def _wait_ready(self, seconds: float) -> None:
        import requests
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self._http.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer on {self.url} within {seconds:g} s:\n"
                                   + self.log_text()[-2000:])
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **params) -> Any:
        r = self._http.get(self.url + path, params=params, timeout=5)
        r.raise_for_status()
        return r

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after 10 s); idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._http.close()
        if not self._log.closed:
            self._log.close()


class DevNodeExporter(_Server):
    """`prometheus-node-exporter` with only its textfile collector, reading `textfile_dir`, on 127.0.0.1:`port`.

    Every default collector is off (`--collector.disable-defaults`) and so are its own Go and process metrics
    (`--web.disable-exporter-metrics`): what it serves is the *.prom files of `textfile_dir`, plus
    node_textfile_mtime_seconds{file} and node_textfile_scrape_error. `target` is its address for a scrape config."""

    name = "node-exporter"
    ready_path = "/metrics"

    def __init__(self, home: Path, textfile_dir: Path, start_seconds: float = 15):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}"
        self.textfile_dir = Path(textfile_dir).resolve()
        super().__init__(home, [
            _binary("prometheus-node-exporter", "node_exporter"),
            f"--web.listen-address={self.target}",
            "--web.disable-exporter-metrics",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={self.textfile_dir}",
            "--log.level=warn",
        ], start_seconds)

    def metrics(self) -> str:
        """What a scrape gets now."""
        return self.get("/metrics").text


class DevPrometheus(_Server):
    """A `prometheus` server on 127.0.0.1:`port` scraping `targets` (job `node`) every `interval`, evaluating
    `rule_files` as often; its TSDB in home/data (thrown away with home). `alerts()`, `query()` and `wait_for()`
    read its HTTP API."""

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(self, home: Path, targets: list[str], rule_files: Sequence[Path] = (),
                 interval: str = "1s", start_seconds: float = 30):
        import yaml
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        self.config_path = home / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": list(targets)}]}],
        }, sort_keys=False))
        super().__init__(home, [
            _binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.console.templates={home / 'consoles'}",
            f"--web.console.libraries={home / 'console_libraries'}",
            "--log.level=warn",
        ], start_seconds)

    def _api(self, path: str, **params) -> Any:
        body = self.get(f"/api/v1/{path}", **params).json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {json.dumps(body)[:500]}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        return self._api("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        """Every active alert: [{"labels": {...}, "annotations": {...}, "state": "firing"|"pending", ...}]."""
        return self._api("alerts")["alerts"]

    def rules(self) -> list[dict]:
        """The rule groups it loaded, with each rule's health and last error."""
        return self._api("rules")["groups"]

    def targets_up(self) -> bool:
        active = self._api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, check: Callable[[], Any], seconds: float = 20, what: str = "condition") -> Any:
        """Poll `check()` until it returns something true; that value, or RuntimeError after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus: no {what} within {seconds:g} s:\n" + self.log_text()[-2000:])
            time.sleep(0.2)
