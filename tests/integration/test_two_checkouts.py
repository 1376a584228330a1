"""Two checkouts side by side: each embedded OpenBao and sandbox API answers only for its own.

Two fresh clones run the README's first command at the same moment; then two state directories ask for the same
port (recorded in their port files, as a checkout does after its first start), so the second finds it held by the
first's server and must take another one, record it and say so.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT, Cli, Result, free_port


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


def _clone(dst: Path) -> Path:
    """A fresh clone of this checkout (`git clone`), with the working tree's changes on top, so that a run before
    a commit tests what is there: no .venv, no .state."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dst)], check=True, timeout=120)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, (os.fsdecode(n) for n in listed.split(b"\0"))):
        src, out = ROOT / name, dst / name
        if src.is_symlink() or src.is_dir():
            continue  # as cloned (the collection's symlink)
        if not src.exists():
            out.unlink(missing_ok=True)  # deleted in the working tree
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return dst


def _user_env(home: Path) -> dict:
    """A user's shell: no Vault, partnercerts or Ansible settings; pip's cache is the machine's."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "ANSIBLE_"))}
    e["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    home.mkdir(parents=True, exist_ok=True)
    e["HOME"] = str(home)
    return e


def _inv(clone: Path, env: dict, *args: str) -> Result:
    p = subprocess.run([str(clone / "scripts" / "inv"), *args], cwd=clone, env=env, capture_output=True, text=True,
                       timeout=600)
    r = Result(p.returncode, p.stdout, p.stderr)
    Cli(env, clone).assert_clean(r)
    return r


def _served_serial(cur: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cur / "client.crt")],
                          capture_output=True, text=True, check=True).stdout.strip().removeprefix("serial=")


def test_two_fresh_clones_rotate_side_by_side_and_each_down_leaves_nothing_running(tmp_path):
    """The README's first command, `scripts/inv rotate`, in two fresh clones at the same moment, on their defaults:
    embedded OpenBao, sandbox authority and API, the two local hosts, a smoke call from each host."""
    clones = [_clone(tmp_path / n / "partnercerts") for n in ("a", "b")]
    envs = [_user_env(tmp_path / n / "home") for n in ("a", "b")]
    states = [c / ".state" for c in clones]
    procs = [subprocess.Popen([str(c / "scripts" / "inv"), "rotate"], cwd=c, env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c, e in zip(clones, envs, strict=True)]
    pids: list[int | None] = []
    try:
        outs = [p.communicate(timeout=900) for p in procs]
        runs = [Result(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]
        for clone, state, r in zip(clones, states, runs, strict=True):
            c = Cli({}, clone)
            c.secrets += [(state / "vault" / n).read_text().strip() for n in ("root-token", "unseal-key")
                          if (state / "vault" / n).exists()]
            c.assert_clean(r)
            assert r.rc == 0 and "done: 2 credential(s) changed, 2 deployed and verified" in r.out, (clone, r.text)
            smoke = re.findall(r"TASK \[partnercerts\.psa\.partnercerts_deploy : Smoke call with all three "
                               r"credentials\] \**\n((?:\w+: \[[\w-]+\]\n)+)", r.out)
            assert sum(len(b.splitlines()) for b in smoke) == 4 and all(
                line.startswith("ok:") for b in smoke for line in b.splitlines()), r.out
        vaults = [json.loads(_inv(c, e, "vault.status", "--json").out) for c, e in zip(clones, envs, strict=True)]
        apis = [json.loads(_inv(c, e, "sandbox.status", "--json").out) for c, e in zip(clones, envs, strict=True)]
        pids += [v["pid"] for v in vaults] + [a["pid"] for a in apis]
        for state, v, a in zip(states, vaults, apis, strict=True):
            assert v["running"] and v["state_dir"] == str(state / "vault") and a["running"], (v, a)
            assert (state / "vault" / "port").read_text().strip() == str(v["port"])
        assert vaults[0]["port"] != vaults[1]["port"] and apis[0]["port"] != apis[1]["port"], (vaults, apis)
        assert len(set(pids)) == 4

        # Each clone's hosts serve its own Vault's certificates.
        for clone, e, state in zip(clones, envs, states, strict=True):
            rows = json.loads(_inv(clone, e, "status", "--json").out)
            assert [(x["mzp"], x["app"], x["state"], x["hosts_in_sync"], x["hosts_total"]) for x in rows] == [
                ("MZP123456", "fleet", "active", 2, 2), ("MZP123456", "telematics", "active", 2, 2)]
            for host in ("local-a", "local-b"):
                for row in rows:
                    cur = state / "hosts" / host / f"MZP123456-{row['app']}" / "current"
                    assert _served_serial(cur) == row["serial"]
                    assert (cur / "client.key").stat().st_mode & 0o777 == 0o600

        # An independent client with clone a's files of local-a, against clone a's sandbox API.
        a, env_a = clones[0], envs[0]
        cur = states[0] / "hosts" / "local-a" / "MZP123456-fleet" / "current"
        envfile = dict(line.split("=", 1) for line in (cur / "client.env").read_text().splitlines())
        assert envfile["PSA_API_URL"].startswith(f"https://127.0.0.1:{apis[0]['port']}/"), envfile["PSA_API_URL"]
        curl = subprocess.run(["curl", "-sS", "--cert", str(cur / "client.crt"), "--key", str(cur / "client.key"),
                               "--cacert", str(cur / "ca.crt"), "-u", f"MZP123456:{envfile['PSA_MZP_PASSWORD']}",
                               f"{envfile['PSA_API_URL']}/fleets?client_id={envfile['PSA_CLIENT_ID']}"],
                              capture_output=True, text=True, timeout=60)
        assert curl.returncode == 0 and json.loads(curl.stdout)["mzp"] == "MZP123456", curl.stderr
        again = _inv(a, env_a, "rotate")
        assert again.rc == 0 and "nothing to do" in again.out and "PLAY" not in again.out, again.text
        assert "failed=0" in _inv(a, env_a, "verify").out
        # The README's standalone playbook commands, as written, in the clone.
        for argv in (["playbooks/deploy.yml", "--check", "--diff"], ["playbooks/verify.yml"], ["playbooks/rotate.yml"]):
            p = subprocess.run([".venv/bin/ansible-playbook", "-i", "inventories/local", *argv], cwd=a, env=env_a,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0 and "failed=0" in p.stdout, argv + [p.stdout[-3000:], p.stderr[-2000:]]
            Cli({}, a).assert_clean(Result(p.returncode, p.stdout, p.stderr))

        # Each clone's down stops its own servers and leaves nothing running.
        for clone, e in zip(clones, envs, strict=True):
            assert _inv(clone, e, "sandbox.down").out.strip() == "stopped"
            assert _inv(clone, e, "vault.down").out.strip() == "stopped"
        assert not any(_alive(p) for p in pids)
        assert all(_free(v["port"]) and _free(v["port"] + 1) for v in vaults) and all(_free(x["port"]) for x in apis)
    finally:
        _stop_all(*states, pids=pids)


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
