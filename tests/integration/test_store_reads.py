"""The lean read path of store.Store (KeepAliveReader): the same answers as hvac, pipelined when the
server allows it, and every unusual answer handed to hvac so that errors read exactly as before."""
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from partnercerts.errors import VaultDenied, VaultUnavailable
from partnercerts.keepalive import KeepAliveReader
from partnercerts.settings import Settings, VaultSettings
from partnercerts.store import Store
from partnercerts.vault import connect
from tests.conftest import free_port


class Forwarder:
    """A loopback HTTP/1.1 forwarder in front of OpenBao that can answer `Connection: close` to everything
    (a server or proxy that does not keep connections alive, so pipelined requests go unanswered)."""

    def __init__(self, upstream: str, close_every: bool):
        self.requests: list[tuple[str, str]] = []
        self.served: list[tuple[int, str]] = []  # (connection number, path): which connection asked what
        self.connections = 0
        fwd = self
        numbers = itertools.count(1)
        session = requests.Session()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                fwd.connections += 1
                self.number = next(numbers)  # itertools.count: atomic, unlike the += above

            def do_GET(self):
                fwd.requests.append((self.command, self.path))
                fwd.served.append((self.number, self.path))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                resp = session.get(upstream + self.path, headers=headers, timeout=30)
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                if close_every:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(resp.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def seeded(bao, mount, n=40):
    """n credentials of which every third has no `current` (404), with an index in its custom metadata."""
    client = bao.client()
    pairs = [(f"MZP{700000 + i:06d}", "fleet") for i in range(n)]
    for i, (mzp, app) in enumerate(pairs):
        if i % 3 == 2:
            continue
        path = f"partnercerts/{mzp}/apps/{app}/current"
        client.secrets.kv.v2.create_or_update_secret(path, {"serial": f"S{i}"}, mount_point=mount)
        client.adapter.post(f"/v1/{mount}/metadata/{path}",
                            json={"custom_metadata": {"serial": f"S{i}", "current_version": "1"}})
    return pairs


def store_for(addr, token, mount) -> Store:
    env = {"VAULT_ADDR": addr, "VAULT_TOKEN": token, "PARTNERCERTS_KV_MOUNT": mount, "HOME": "/nonexistent",
           "PARTNERCERTS_VAULT_RETRY_SECONDS": "1"}
    settings = Settings.from_env(env)
    return Store(connect(settings, env), settings)


def expected(pairs):
    return [None if i % 3 == 2 else (f"S{i}", 1) for i in range(len(pairs))]


def test_index_reads_match_hvac_pipelined_in_few_round_trips(bao, mount):
    pairs = seeded(bao, mount)
    fwd = Forwarder(bao.addr, close_every=False)
    try:
        store = store_for(fwd.addr, bao.token, mount)
        assert store._reader is not None
        got = store.read_indexes(pairs)
        assert [(g[0].serial, g[1]) if g else None for g in got] == expected(pairs)
        assert store._reader.pipelining and fwd.connections == 1
        # one by one, the same answers
        assert [store.read_index(m, a) for m, a in pairs] == got
        assert store.read(f"partnercerts/{pairs[0][0]}/apps/fleet/current").data == {"serial": "S0"}
        assert store.read(f"partnercerts/{pairs[2][0]}/apps/fleet/current") is None
    finally:
        fwd.close()


def test_a_server_that_closes_every_connection_still_gets_every_read(bao, mount):
    pairs = seeded(bao, mount)
    fwd = Forwarder(bao.addr, close_every=True)
    try:
        store = store_for(fwd.addr, bao.token, mount)
        got = store.read_indexes(pairs)
        assert [(g[0].serial, g[1]) if g else None for g in got] == expected(pairs)
        assert not store._reader.pipelining  # turned off after the first window went unanswered
        paths = [p for _, p in fwd.requests]
        assert all(any(p.endswith(f"/{m}/apps/fleet/current") for p in paths) for m, _ in pairs)
    finally:
        fwd.close()


def test_a_denied_read_says_the_same_as_through_hvac(bao, mount):
    seeded(bao, mount, n=3)
    client = bao.client()
    client.sys.create_or_update_policy("meta-only", f'path "{mount}/metadata/*" {{ capabilities = ["read"] }}')
    token = client.auth.token.create(policies=["meta-only"], ttl="5m")["auth"]["client_token"]
    store = store_for(bao.addr, token, mount)
    assert store._reader is not None
    assert store.read_index("MZP700000", "fleet")[0].serial == "S0"  # metadata: allowed
    with pytest.raises(VaultDenied, match=rf"denied GET {mount}/data/partnercerts/MZP700000/apps/fleet/current"):
        store.read("partnercerts/MZP700000/apps/fleet/current")


def test_no_lean_reads_through_a_proxy_or_with_a_client_certificate(bao):
    import hvac
    plain = VaultSettings.from_env({})
    assert KeepAliveReader.for_client(hvac.Client(url=bao.addr, token=bao.token), plain) is not None
    assert KeepAliveReader.for_client(hvac.Client(url=bao.addr, token=bao.token, cert=("c.pem", "k.pem")),
                                      plain) is None
    proxied = VaultSettings.from_env({"HTTPS_PROXY": "http://proxy.example:3128"})
    assert KeepAliveReader.for_client(hvac.Client(url=bao.addr, token=bao.token), proxied) is None


def test_vault_down_is_reported_as_before(mount):
    store = store_for(f"http://127.0.0.1:{free_port()}", "t", mount)
    with pytest.raises(VaultUnavailable, match="is unreachable"):
        store.read_indexes([("MZP700000", "fleet"), ("MZP700001", "fleet")])


def test_no_lean_reads_when_vault_addr_names_several_nodes(bao, mount):
    # With several nodes the failover adapter alone picks the active node: a standby would answer
    # reads from a lagging copy, so the lean reader must not go around that choice.
    seeded(bao, mount, n=3)
    store = store_for(f"{bao.addr},http://127.0.0.1:{free_port()}", bao.token, mount)
    assert store._reader is None
    assert store.read_index("MZP700000", "fleet")[0].serial == "S0"
    assert store.read_indexes([("MZP700000", "fleet"), ("MZP700002", "fleet")])[1] is None
