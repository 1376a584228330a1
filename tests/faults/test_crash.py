"""Crash of the control node: the real `invoke rotate` / `import-cert` process group is SIGKILLed at
each step of a rotation, and the next run converges with exactly one key per renewal.

The instant is chosen without any hook in the code under test: the loopback proxy in front of Vault
holds the run's n-th write to a given path (`after`: the server has done it, the run never hears
back; `before`: the server never sees it) and the test kills the process group while it waits there.
A second test kills at random instants of a run, to cover the windows between Vault calls (key
generation, writing the outbox)."""
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

from tests.faults.conftest import MZP, audit, kill_group, make_world, new_mount, released_keys, sign_pending

APP = "fleet"
CRED = rf"/data/partnercerts/{MZP}/apps/{APP}"
INDEX = rf"/metadata/partnercerts/index/{MZP}\.{APP}$"

# (name, submission, command, (method, path, n-th, before/after))
POINTS = [
    ("rotate: lock taken", "outbox", "rotate", ("POST", r"/data/partnercerts/locks/rotate$", 1, "after")),
    ("rotate: pending key written", "outbox", "rotate", ("POST", CRED + "/pending$", 1, "after")),
    ("rotate: pending key indexed", "outbox", "rotate", ("POST", INDEX, 1, "after")),
    ("rotate: Message-ID recorded, CSR not yet released", "outbox", "rotate", ("POST", CRED + "/pending$", 2, "after")),
    ("rotate: CSR released, submission not recorded", "outbox", "rotate", ("POST", CRED + "/pending$", 3, "before")),
    ("rotate: submission recorded", "outbox", "rotate", ("POST", CRED + "/pending$", 3, "after")),
    ("rotate: run recorded, lock not released", "outbox", "rotate",
     ("POST", r"/data/partnercerts/runs/rotate$", 1, "after")),
    ("rotate (sandbox): history written, current not", "sandbox", "rotate",
     ("POST", CRED + r"/history/\w+$", 1, "after")),
    ("rotate (sandbox): current written, tombstone not", "sandbox", "rotate", ("POST", CRED + "/current$", 1, "after")),
    ("rotate (sandbox): tombstone written, index not", "sandbox", "rotate", ("POST", CRED + "/pending$", 2, "after")),
    ("import-cert: history written, current not", "outbox", "import", ("POST", CRED + r"/history/\w+$", 1, "after")),
    ("import-cert: index marked, current not", "outbox", "import", ("POST", INDEX, 1, "after")),
    ("import-cert: current written, tombstone not", "outbox", "import", ("POST", CRED + "/current$", 1, "after")),
    ("import-cert: tombstone written, index not", "outbox", "import", ("POST", CRED + "/pending$", 1, "after")),
]


def kill_when_held(w, args) -> bool:
    """Start the real command, SIGKILL its process group once the proxy holds the chosen request."""
    proc = w.popen(*args)
    deadline = time.monotonic() + 180
    while not w.proxy.held.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    held = w.proxy.held.is_set()
    kill_group(proc)
    w.proxy.restore()  # the held request's connection is dropped: the process is gone anyway
    return held


def one_crash(point, bao, proxies, base, ca):
    """Crash at one point, then let the next runs converge; returns (name, outcome, keys lost, problem)."""
    name, submission, command, (method, path, nth, when) = point
    client = bao.client()
    proxy = proxies(bao.addr, bao.token)
    w = make_world(base, proxy.addr, bao.token, new_mount(client), client, submission=submission)
    w.proxy = proxy
    cli = w.cli()
    import_args = None
    if command == "import":
        cli("rotate", "--no-deploy")
        cert = sign_pending(w, APP, ca, base)
        import_args = ("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(cert), "--ca", str(ca.path),
                       "--client-id", "crash-client")
    proxy.arm(method, path, nth=nth, when=when, action="hold")
    if not kill_when_held(w, import_args or ("rotate", "--no-deploy")):
        return name, "not reached", 0, f"the run never made that request; writes: {proxy.writes()}"
    # The next runs: the user repeats the import, the scheduled rotation runs.
    if import_args:
        again = cli(*import_args, ok=False)
        if again.rc != 0:
            return name, "import not repeatable", 0, again.text
    nxt = cli("rotate", "--no-deploy", ok=False)
    if nxt.rc != 0 or "holds the lock" in nxt.out:
        return name, "next run did not converge", 0, nxt.text
    if command == "rotate" and "took over the rotation lock of a run that died on this machine" not in nxt.out:
        return name, "the dead run's lock was not reported as taken over", 0, nxt.text
    a = audit(w, APP)
    lost = a.lost()
    status = {r["app"]: r for r in json.loads(cli("status", "--json").out)}[APP]
    pending = w.raw.read(f"{MZP}/apps/{APP}/pending")["data"]
    if submission == "sandbox" or import_args:
        want = "active"
        ok = pending["state"] == "consumed" and a.current == pending["key_sha256"]
    else:
        want = "pending"
        ok = pending["state"] == "pending" and bool(pending["submitted_at"]) and set(
            released_keys(w.outbox, APP)) == {pending["key_sha256"]}
    if status["state"] != want or not ok:
        return name, "not converged", lost, f"status {status['state']}, pending {pending.get('state')}, {a}"
    return name, "converged", lost, ""


def guarded(point, *args):
    try:
        return one_crash(point, *args)
    except Exception as exc:  # noqa: BLE001 - one point's surprise must not hide the others' results
        return point[0], f"error: {type(exc).__name__}", 0, repr(exc)


def test_sigkill_of_the_control_node_at_each_step_of_a_rotation(bao, proxies, tmp_path, ca, chaos):
    """Every point runs in its own mount, outbox and proxy, three at a time."""
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda ip: guarded(ip[1], bao, proxies, tmp_path / f"p{ip[0]}", ca),
                                enumerate(POINTS)))
    problems = []
    for name, outcome, lost, problem in results:
        chaos(f"SIGKILL: {name}").run(outcome, keys_lost=lost, ok=outcome == "converged" and not lost,
                                      note=problem.strip().splitlines()[-1] if problem.strip() else "")
        if outcome != "converged" or lost:
            problems.append(f"{name}: {outcome}: {problem[-600:]}")
    assert not problems, "\n".join(problems)


def test_sigkill_at_random_instants_of_a_rotation(bao, tmp_path, chaos):
    """Kill after a random (seeded) delay, between or during Vault calls, then let the next run converge."""
    record = chaos("SIGKILL: random instants of rotate (outbox, 2 credentials)")
    rng = random.Random(20261128)
    client = bao.client()
    apps = (("fleet", "rsa3072"), ("big", "rsa2048"))
    for rep in range(4):
        w = make_world(tmp_path / f"r{rep}", bao.addr, bao.token, new_mount(client), client, apps=apps)
        cli = w.cli()
        started = time.monotonic()
        proc = w.popen("rotate", "--no-deploy")
        if rep == 0:
            proc.communicate()  # the first run is measured, not killed: the scale of the delays
            scale = time.monotonic() - started
            continue
        time.sleep(rng.uniform(0.2, 1.0) * scale)
        kill_group(proc)
        nxt = cli("rotate", "--no-deploy", ok=False)
        lost = 0
        converged = nxt.rc == 0 and "holds the lock" not in nxt.out
        for app, _ in apps:
            pend = (w.raw.read(f"{MZP}/apps/{app}/pending") or {}).get("data") or {}
            a = audit(w, app)
            lost += a.lost()
            converged = converged and pend.get("state") == "pending" and bool(pend.get("submitted_at")) \
                and a.released == {pend.get("key_sha256")}
        record.run("converged" if converged else "NOT converged", keys_lost=lost)
        assert converged, nxt.text
        assert lost == 0
