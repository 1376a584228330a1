"""Shared fixtures: a real OpenBao server per session, a fresh KV v2 mount per test, a CLI runner
that scans everything a command printed for secrets."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.devservers import DevBao, free_port  # noqa: E402,F401 (tests import free_port from here)

pytest_plugins = ["tests.plugins.testhosts", "tests.plugins.chaos", "tests.plugins.mailbox"]

DEMO_PARTNER = """\
partnercerts_partners:
  - mzp: MZP654321
    country: FR
    state: Île-de-France
    locality: Boulogne-Billancourt
    organization: Free2Move, SAS
    email: pki@free2move.example
    submission: sandbox
    renew_before_days: 60
    applications:
      - name: fleet
      - name: big
        key: rsa3072
"""


@pytest.fixture(scope="session")
def bao(tmp_path_factory) -> DevBao:
    """A real OpenBao dev server on loopback for the whole session (.addr, .token, .client())."""
    server = DevBao(tmp_path_factory.mktemp("bao-home"), token_prefix="root-")
    yield server
    server.stop()


@pytest.fixture
def inventory(tmp_path) -> Path:
    inv = tmp_path / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (inv / "group_vars" / "all" / "partners.yml").write_text(DEMO_PARTNER, encoding="utf-8")
    return inv


@pytest.fixture
def mount(bao) -> str:
    """A fresh KV v2 mount for one test, removed after it."""
    name = "t" + uuid.uuid4().hex[:10]
    client = bao.client()
    client.sys.enable_secrets_engine("kv", path=name, options={"version": "2"})
    yield name
    client.sys.disable_secrets_engine(name)


@pytest.fixture
def env(bao, mount, inventory, tmp_path) -> dict:
    """The environment a user would have: VAULT_* pointing at the test server, the test inventory."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_"))}
    e.update(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, PARTNERCERTS_KV_MOUNT=mount,
             PARTNERCERTS_INVENTORY=str(inventory), PARTNERCERTS_STATE_DIR=str(tmp_path / "state"),
             HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return e


class Raw:
    """Reads Vault through a separate raw client, never through the code under test."""

    def __init__(self, client: hvac.Client, mount: str, prefix: str = "partnercerts"):
        self.c, self.mount, self.prefix = client, mount, prefix

    def read(self, path: str, version: int | None = None) -> dict | None:
        try:
            r = self.c.secrets.kv.v2.read_secret_version(f"{self.prefix}/{path}", version=version,
                                                        mount_point=self.mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return None
        return r["data"]

    def meta(self, path: str) -> dict | None:
        try:
            return self.c.secrets.kv.v2.read_secret_metadata(f"{self.prefix}/{path}", mount_point=self.mount)["data"]
        except hvac.exceptions.InvalidPath:
            return None

    def index(self, cred: str) -> dict:
        """The credential index of "MZP/apps/app" (custom metadata of <prefix>/index/MZP.app), {} when absent."""
        mzp, _, app = cred.partition("/apps/")
        return dict((self.meta(f"index/{mzp}.{app}") or {}).get("custom_metadata") or {})

    def snapshot(self) -> dict:
        """Every path under the prefix with its full version history: to prove nothing changed."""
        out = {}

        def walk(p):
            try:
                keys = self.c.secrets.kv.v2.list_secrets(p, mount_point=self.mount)["data"]["keys"]
            except hvac.exceptions.InvalidPath:
                return
            for k in keys:
                if k.endswith("/"):
                    walk(p + "/" + k.rstrip("/"))
                else:
                    m = self.c.secrets.kv.v2.read_secret_metadata(p + "/" + k, mount_point=self.mount)["data"]
                    data = self.read((p + "/" + k).removeprefix(self.prefix + "/")) if m["current_version"] else None
                    out[p + "/" + k] = (m["current_version"], m.get("custom_metadata"), data)
        walk(self.prefix)
        return out


@pytest.fixture
def raw(bao, mount) -> Raw:
    return Raw(bao.client(), mount)


SECRET_MARKERS = ("PRIVATE KEY", "-----BEGIN ENCRYPTED", "p12_password", "key_pem")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


# What scripts/inv execs (same venv, same tasks.py): a plain `status` runs without Invoke, the rest through it.
INV = [sys.executable, "-P", "-m", "partnercerts.quick", "--search-root", str(ROOT)]
INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]  # Invoke itself, for the comparison


class Cli:
    """Runs a task exactly as scripts/inv does and checks its output."""

    def __init__(self, env: dict, cwd: Path):
        self.env, self.cwd = env, cwd
        self.secrets: list[str] = []

    def __call__(self, *args: str, input: str | None = None, ok: bool = True, env: dict | None = None) -> Result:
        p = subprocess.run([*INV, *args],
                           env={**self.env, **(env or {})}, cwd=self.cwd, input=input, text=True,
                           capture_output=True, timeout=300)
        r = Result(p.returncode, p.stdout, p.stderr)
        self.assert_clean(r)
        if ok:
            assert r.rc == 0, f"{args} failed ({r.rc}):\n{r.text}"
        return r

    def assert_clean(self, r: Result) -> None:
        for marker in SECRET_MARKERS:
            assert marker not in r.text, f"secret marker {marker!r} printed:\n{r.text}"
        for secret in self.secrets:
            assert secret not in r.text, "a known secret value was printed"
        assert "Traceback" not in r.text, r.text


@pytest.fixture
def cli(env, tmp_path, bao) -> Cli:
    c = Cli(env, tmp_path)
    c.secrets.append(bao.token)
    return c
