"""Two state directories side by side (two checkouts): each embedded OpenBao and sandbox API answers only for its own.

Both directories ask for the same port (recorded in their port files, as a checkout does after its first start),
so the second finds it held by the first's server and must take another one, record it and say so.
"""
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

from tests.conftest import Cli, free_port


def _cli(env: dict, state: Path, **extra: str) -> Cli:
    e = {k: v for k, v in env.items() if not k.startswith("VAULT_") and k != "PARTNERCERTS_KV_MOUNT"}
    e.update(PARTNERCERTS_STATE_DIR=str(state), **extra)
    state.mkdir(parents=True, exist_ok=True)
    return Cli(e, state.parent)


def _record(state: Path, vault_port: int, sandbox_port: int) -> None:
    for sub, port in (("vault", vault_port), ("sandbox-api", sandbox_port)):
        (state / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        (state / sub / "port").write_text(f"{port}\n")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None or not Path(f"/proc/{pid}").exists():
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
        return True
    except OSError:
        return False


def _kill(*pids: int | None) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _stop_all(*states: Path, pids: list[int | None]) -> None:
    """Whatever the test started, stopped without trusting the code under test."""
    _kill(*pids, *(_pid(s / sub) for s in states for sub in ("vault/bao.pid", "sandbox-api/server.pid")))


def _two_free_ports() -> int:
    while True:
        port = free_port()
        if port < 65000 and _free(port + 1):
            return port


def test_two_state_dirs_on_the_same_port_each_run_and_stop_their_own(env, tmp_path):
    vport, sport = _two_free_ports(), free_port()
    a, b, c = (tmp_path / n / "state" for n in ("a", "b", "c"))
    for state in (a, b):
        _record(state, vport, sport)
    cli_a, cli_b = _cli(env, a), _cli(env, b)
    pids: list[int | None] = []
    try:
        cli_a("rotate", "--no-deploy")
        rb = cli_b("rotate", "--no-deploy")
        a_pid = _pid(a / "vault" / "bao.pid")
        assert re.search(rf"^note: 127\.0\.0\.1:{vport} is held by the embedded OpenBao of {a} \(pid {a_pid}\); "
                         rf"the embedded OpenBao of {b} uses 127\.0\.0\.1:\d+ instead "
                         rf"\(recorded in {b}/vault/port\)$", rb.err, re.M), rb.err
        for cli in (cli_a, cli_b):
            assert "active" in cli("status").out
        st_a, st_b = (json.loads(cli("vault.status", "--json").out) for cli in (cli_a, cli_b))
        assert st_a["state_dir"] == str(a / "vault") and st_b["state_dir"] == str(b / "vault")
        assert st_a["port"] == vport and st_b["port"] != vport and (b / "vault" / "port").read_text().strip() == str(
            st_b["port"])
        assert st_a["running"] and st_b["running"] and st_a["pid"] == a_pid and st_b["pid"] != a_pid
        b_pid = st_b["pid"]
        pids += [a_pid, b_pid]

        # A start that cannot happen never overwrites the pid file of the server that runs.
        r = cli_a("vault.up", env={"PARTNERCERTS_EMBEDDED_PORT": str(st_b["port"])}, ok=False)
        assert r.rc == 2 and f"the embedded OpenBao of {a} runs on 127.0.0.1:{vport} (pid {a_pid})" in r.err, r.err
        assert _pid(a / "vault" / "bao.pid") == a_pid and _alive(a_pid) and not _free(vport)
        # A pinned port held by another state dir: one line naming it, nothing started, no pid file.
        cli_c = _cli(env, c, PARTNERCERTS_EMBEDDED_PORT=str(vport))
        r = cli_c("status", ok=False)  # it used to end in "unexpected FileNotFoundError", on a's server
        assert r.rc == 2 and (f"error: 127.0.0.1:{vport} (PARTNERCERTS_EMBEDDED_PORT, with {vport + 1} for its "
                              f"cluster) is held by the embedded OpenBao of {a} (pid {a_pid}); stop it with: "
                              f"PARTNERCERTS_STATE_DIR={a} scripts/inv vault.down, or set PARTNERCERTS_EMBEDDED_PORT "
                              f"to a free port, or unset it to let {c} pick one") in r.err, r.err
        assert not (c / "vault" / "bao.pid").exists()
        st_c = json.loads(cli_c("vault.status", "--json").out)
        assert not st_c["running"] and st_c["pid"] is None and st_c["port_held_by"] == \
            f"the embedded OpenBao of {a} (pid {a_pid})"
        assert cli_c("vault.down").out.strip() == (f"not running (http://127.0.0.1:{vport} is held by the embedded "
                                                   f"OpenBao of {a} (pid {a_pid}), not by {c / 'vault'})")

        # The sandbox APIs, on the same recorded port: the second moves and the local inventory follows.
        cli_a("sandbox.up")
        up_b = cli_b("sandbox.up")
        sb_a, sb_b = (json.loads(cli("sandbox.status", "--json").out) for cli in (cli_a, cli_b))
        pids += [sb_a["pid"], sb_b["pid"]]
        assert sb_a["port"] == sport and sb_b["port"] != sport and sb_a["pid"] != sb_b["pid"]
        assert (f"note: port {sport} is held by the sandbox API of {a} (pid {sb_a['pid']}); the sandbox API of {b} "
                f"uses port {sb_b['port']} instead (recorded in {b}/sandbox-api/port)") in up_b.err, up_b.err
        assert (b / "sandbox-api" / "port").read_text().strip() == str(sb_b["port"])

        # Each down stops its own server only, and leaves nothing running.
        assert cli_b("sandbox.down").out.strip() == "stopped" and cli_b("vault.down").out.strip() == "stopped"
        assert not _alive(b_pid) and not _alive(sb_b["pid"]) and _alive(a_pid) and _alive(sb_a["pid"])
        assert _free(st_b["port"]) and _free(sb_b["port"]) and not _free(vport) and not _free(sport)
        assert cli_b("vault.down").out.strip() == "not running"
        assert cli_a("sandbox.down").out.strip() == "stopped" and cli_a("vault.down").out.strip() == "stopped"
        assert not any(_alive(p) for p in pids) and _free(vport) and _free(sport)
        # Restarted, b finds its recorded port and its data again.
        assert "active" in cli_b("status").out
        assert _alive(_pid(b / "vault" / "bao.pid")) and not _free(st_b["port"]) and _free(vport)
    finally:
        _stop_all(a, b, c, pids=pids)
    assert _free(vport) and _free(sport)


def test_an_orphan_of_a_deleted_state_dir_is_named_and_worked_around(env, tmp_path):
    vport, sport = _two_free_ports(), free_port()
    gone, new, pinned = (tmp_path / n / "state" for n in ("gone", "new", "pinned"))
    for state in (gone, new):
        _record(state, vport, sport)
    cli_gone, cli_new = _cli(env, gone), _cli(env, new)
    cli_pinned = _cli(env, pinned, PARTNERCERTS_EMBEDDED_PORT=str(vport))
    orphans: list[int | None] = []
    try:
        cli_gone("sandbox.up")
        orphans += [_pid(gone / "vault" / "bao.pid"), _pid(gone / "sandbox-api" / "server.pid")]
        bao, api = orphans
        shutil.rmtree(gone.parent)  # the checkout is deleted, its servers keep running
        r = cli_new("vault.up")
        assert (f"note: 127.0.0.1:{vport} is held by the embedded OpenBao of {gone} (deleted, pid {bao}) "
                f"(stop it with: kill {bao}); the embedded OpenBao of {new} uses 127.0.0.1:") in r.err, r.err
        r = cli_new("sandbox.up")
        assert (f"note: port {sport} is held by the sandbox API of {gone} (deleted, pid {api}) (stop it with: "
                f"kill {api}); the sandbox API of {new} uses port ") in r.err, r.err
        # Pinned, the same orphans are named with the fix, and nothing is started.
        r = cli_pinned("sandbox.up", "--port", str(sport), ok=False)
        assert r.rc == 2 and f"cannot listen on 127.0.0.1:{sport} (Address already in use" in r.err and (
            f"; held by the sandbox API of {gone} (deleted, pid {api}), stop it with: kill {api}); choose another "
            "--port") in r.err, r.err
        st = json.loads(cli_pinned("vault.status", "--json").out)
        assert not st["running"] and st["port_held_by"] == f"the embedded OpenBao of {gone} (deleted, pid {bao})"
        r = cli_pinned("vault.up", ok=False)
        assert r.rc == 2 and f"is held by the embedded OpenBao of {gone} (deleted, pid {bao}); stop it with: " \
            f"kill {bao}, or set PARTNERCERTS_EMBEDDED_PORT" in r.err, r.err
        assert cli_new("sandbox.down").out.strip() == "stopped" and cli_new("vault.down").out.strip() == "stopped"
        assert _alive(bao) and _alive(api)  # the orphans are not ours to stop
    finally:
        _stop_all(new, pinned, pids=orphans)
    assert _free(vport) and _free(sport)
