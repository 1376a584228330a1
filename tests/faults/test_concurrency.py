"""Concurrency: many rotations at once against one Vault make one pending key per due credential,
and every run exits cleanly (the losers say who holds the lock)."""
import datetime as dt
import re
import threading
import uuid

from partnercerts.lock import Lock
from partnercerts.settings import Settings
from partnercerts.store import Store
from tests.faults.conftest import MZP, audit, finish, make_world, new_mount, released_keys, versions

APPS = (("fleet", "rsa4096"), ("big", "rsa4096"), ("telematics", "rsa3072"))  # slow keys: the lock is held a while
RUNS = 10
ROUNDS = 1


def test_ten_rotations_at_once_make_one_pending_key_per_credential(bao, tmp_path, chaos):
    record = chaos("concurrency: 10 rotations at once")
    for round_ in range(ROUNDS):
        mount = new_mount(bao.client())
        w = make_world(tmp_path / f"round{round_}", bao.addr, bao.token, mount, bao.client(), apps=APPS)
        procs = [w.popen("rotate", "--no-deploy") for _ in range(RUNS)]  # all started at once
        results = [finish(p) for p in procs]
        pids = {str(p.pid) for p in procs}
        lost = 0
        for app, _ in APPS:
            a = audit(w, app)
            lost += a.lost()
            sent = released_keys(w.outbox, app)
            assert len(sent) == 1, f"{app}: {len(sent)} CSRs released to the outbox, want exactly 1"
            live = versions(w.raw, f"{MZP}/apps/{app}/pending")
            assert {d["key_sha256"] for d in live} == set(sent), f"{app}: more than one pending key"
            assert live[-1]["submitted_at"], f"{app}: the CSR was released but its submission not recorded"
        made = sum(r.out.count("new key and CSR") for r in results)
        held = [r for r in results if "another rotation holds the lock" in r.out]
        for n, r in enumerate(results):
            record.run("FAILED" if r.rc != 0 else
                       "exit 0, made the keys" if "new key and CSR" in r.out else
                       "exit 0, named the lock holder" if r in held else
                       "exit 0, found the work done", keys_lost=lost if n == 0 else 0)
        for r in results:
            assert r.rc == 0, f"a concurrent run failed ({r.rc}):\n{r.text}"
            assert "Traceback" not in r.text and "FAILED" not in r.text, r.text
        assert made == len(APPS), f"{made} keys made for {len(APPS)} due credentials"
        for r in held:  # the losers name the holder: one of these runs, by pid
            m = re.search(r"another rotation holds the lock: \S+ pid (\d+) \(scripts/inv rotate\), since \S+ "
                          r"\(expires \S+\); nothing done", r.out)
            assert m and m.group(1) in pids, r.out
        assert held, "no run met the lock: the runs did not overlap"
        assert lost == 0


def test_the_vault_lock_has_one_holder_however_close_the_race(bao, mount, env, chaos):
    """Eight contenders released by a barrier, many rounds: exactly one may hold the lock each time."""
    record = chaos("concurrency: lock race (8 contenders)")
    now = dt.datetime.now(dt.timezone.utc)
    rounds, contenders = 40, 8
    doubles = 0
    for i in range(rounds):
        name = f"race-{i}-{uuid.uuid4().hex[:6]}"
        barrier = threading.Barrier(contenders)
        won: list[str] = []

        def contend(n, name=name, barrier=barrier, won=won):
            lock = Lock(Store(bao.client(), store_settings(env)), name=name)
            barrier.wait()
            if lock.acquire(f"contender {n}", now) is None:
                won.append(f"contender {n}")

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        doubles += len(won) > 1
        record.run("one holder" if len(won) == 1 else f"{len(won)} holders")
    assert doubles == 0, f"{doubles} of {rounds} rounds had two or more runs holding the lock at once"


def store_settings(env):
    return Settings.from_env(env)


def test_racing_csr_commands_make_one_key(bao, mount, env, inventory, chaos):
    """`csr` (which takes no lock) racing itself or a rotation: one key is created, the others get it back."""
    from partnercerts import inventory as inventory_mod
    from partnercerts.errors import Error
    from partnercerts.toolkit import Toolkit
    record = chaos("concurrency: csr race (4 contenders)")
    settings = Settings.from_env(env)
    inv = inventory_mod.load(settings.inventory)
    now = dt.datetime.now(dt.timezone.utc)
    rounds, contenders = 6, 4
    bad = []
    for i in range(rounds):
        app = "fleet" if i % 2 == 0 else "big"
        mzp = "MZP654321"
        creds = [Toolkit(settings, inv, Store(bao.client(), Settings.from_env(dict(env, PARTNERCERTS_PREFIX=f"r{i}"))))
                 for _ in range(contenders)]
        barrier = threading.Barrier(contenders)
        results = []

        def contend(c, barrier=barrier, results=results, mzp=mzp, app=app):
            barrier.wait()
            try:
                results.append(c.pending.make_csr(mzp, app, now))
            except Error as exc:
                results.append(exc)

        threads = [threading.Thread(target=contend, args=(c,)) for c in creds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        raw_versions = bao.client().secrets.kv.v2.read_secret_metadata(f"r{i}/{mzp}/apps/{app}/pending",
                                                                      mount_point=mount)["data"]["current_version"]
        made = [r for r in results if not isinstance(r, Exception) and r.created]
        keys = {r.key_sha256 for r in results if not isinstance(r, Exception)}
        ok = len(made) == 1 and len(keys) == 1 and raw_versions == 1
        record.run("one key" if ok else f"{raw_versions} keys written", keys_lost=raw_versions - 1)
        if not ok:
            bad.append(f"round {i}: {raw_versions} versions written, {len(made)} created, "
                       f"{sum(isinstance(r, Exception) for r in results)} failed")
    assert not bad, bad
