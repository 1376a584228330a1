"""The benchmark of issue 6: 1,000 credentials and 50 hosts, each figure beside its obvious alternative.

    scripts/bench [--size full|tiny] [--repeat N] [--cases status,rotate,csr,deploy,memory] [--json FILE]

Starts its own OpenBao (dev mode, loopback, a random port) and its own SSH test hosts
(devtools/testhosts.py: one sshd per host in its own network namespace; needs root), seeds Vault
itself, runs every command as a user would (a fresh `python -m invoke ... TASK` process) and prints
one table of medians over `--repeat` runs, with the baseline measured in the same run beside each
figure:

  status-1k       `status --json`, 1,000 credentials    vs the same 1,000 `current` reads with plain
  rotate-noop-1k  `rotate`, nothing due, all in sync       hvac, one by one (read_secret_version; the
                                                           read loop only, start-up not counted)
  csr-100         `rotate --no-deploy`, 100 due credentials (keys, CSRs, Vault writes, outbox
                  submission), on all cores and pinned to one core
                                                        vs 100 bare RSA-2048 generations with
                                                           `cryptography` in one process (the floor)
  deploy-noop-N   `deploy` (the real playbook) changing nothing on N hosts
  deploy-change-N `deploy` of one renewed certificate to N hosts
                                                        vs `ansible -m ping` to the same hosts (the
                                                           floor of one SSH round)
  memory-10k      peak RSS of `status --json` over 10,000 credentials

Seeding is not timed. The credentials of status, rotate and memory are written through the core
(Store, check-and-set) with certificates of the sandbox authority made with a smaller TEST key size
(RSA-1024 CA, a small pool of RSA-1024 partner keys): a benchmark-only shortcut that never applies
to a real inventory. The csr and deploy cases use the real paths with RSA-2048 keys.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import ROOT, testhosts
from .devservers import DevBao

PY = sys.executable
SIZES = {
    # partners x applications per case, deploy host counts, default repeats
    "full": {"status": (100, 10), "memory": (1000, 10), "csr": (10, 10), "hosts": [10, 50], "repeat": 5},
    "tiny": {"status": (2, 5), "memory": (4, 5), "csr": (2, 5), "hosts": [2], "repeat": 1},
}
ALL_CASES = ("status", "rotate", "csr", "deploy", "memory")
SEED_KEY_BITS = 1024  # test key size for seeding only
SEED_KEY_POOL = 16
MOUNT_PREFIX = "bench"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- processes ------------------------------------------------------------------------------

@dataclass
class Proc:
    wall: float      # seconds, fork to exit
    cpu: float       # user + system seconds of the process and the children it reaped
    maxrss_mb: float  # peak resident set of the process (or its largest reaped child)
    rc: int
    out: str
    err: str


def run(argv: list[str], env: dict, *, cwd: Path | None = None, stdin: str | None = None,
        cpus: set[int] | None = None, check: bool = True, timeout: float = 3600) -> Proc:
    """Run a command to completion and measure it with wait4 (its own rusage, not the bench's)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        start = time.perf_counter()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, preexec_fn=preexec,
                             stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        if stdin is not None:
            try:
                p.stdin.write(stdin.encode())
            except BrokenPipeError:
                pass
            p.stdin.close()
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        r = Proc(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, p.returncode,
                 out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and r.rc != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {r.rc}:\n{r.out[-3000:]}\n{r.err[-3000:]}")
    return r


def invoke(*args: str) -> list[str]:
    """A task run exactly as scripts/inv runs it (the venv's invoke, this repository's tasks.py)."""
    return [PY, "-m", "invoke", "--search-root", str(ROOT), *args]


# The baselines run in their own process and time only their loop (start-up excluded: conservative).
HVAC_READS = textwrap.dedent("""\
    import json, sys, time, hvac
    addr, token, mount = sys.argv[1:4]
    paths = sys.stdin.read().split()
    client = hvac.Client(url=addr, token=token)
    start = time.perf_counter()
    for path in paths:
        client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "reads": len(paths)}))
""")
KEYGEN_FLOOR = textwrap.dedent("""\
    import json, sys, time
    from cryptography.hazmat.primitives.asymmetric import rsa
    n = int(sys.argv[1])
    start = time.perf_counter()
    for _ in range(n):
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    print(json.dumps({"seconds": time.perf_counter() - start}))
""")


def loop_seconds(p: Proc) -> float:
    return float(json.loads(p.out.strip().splitlines()[-1])["seconds"])


# -- OpenBao --------------------------------------------------------------------------------

class Bao(DevBao):
    """The bench's OpenBao dev server (in memory; gone when stopped), with its version and fresh mounts."""

    def __init__(self, work: Path):
        super().__init__(work / "bao", token_prefix="bench-")
        self.version = self.client().sys.read_health_status(method="GET").get("version", "?")

    def new_mount(self, name: str) -> str:
        self.client().sys.enable_secrets_engine("kv", path=name, options={"version": "2"})
        return name


# -- inventories and seeding ----------------------------------------------------------------

def mzp(i: int) -> str:
    return f"MZP{100000 + i:06d}"


def partners_yaml(partners: int, apps: int, submission: str | dict = "sandbox", first: int = 0,
                  app_names: list[str] | None = None) -> str:
    import yaml
    names = app_names or [f"app{j}" for j in range(apps)]
    doc = {"partnercerts_partners": [
        {"mzp": mzp(first + i), "country": "FR", "state": "Île-de-France", "locality": "Paris",
         "organization": f"Bench Partner {first + i}, SAS", "email": f"pki{first + i}@bench.example",
         "submission": submission, "applications": [{"name": n} for n in names]}
        for i in range(partners)]}
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def write_inventory(path: Path, partners_text: str, hosts_text: str = "all:\n  hosts: {}\n") -> Path:
    (path / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(hosts_text)
    (path / "group_vars" / "all" / "partners.yml").write_text(partners_text, encoding="utf-8")
    return path


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.size = SIZES[args.size]
        self.repeat = args.repeat or self.size["repeat"]
        self.work = work
        self.bao: Bao | None = None
        self.rows: list[dict] = []
        self.notes: list[str] = []

    # environment of one task process: Vault, mount, inventory, state
    def env(self, mount: str, inventory: Path, **extra) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_", "ANSIBLE_"))}
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        e.update(VAULT_ADDR=self.bao.addr, VAULT_TOKEN=self.bao.token, PARTNERCERTS_KV_MOUNT=mount,
                 PARTNERCERTS_INVENTORY=str(inventory), PARTNERCERTS_STATE_DIR=str(self.work / "state"),
                 HOME=str(home), ANSIBLE_NOCOLOR="1", **extra)
        return e

    def core(self, mount: str, inventory: Path):
        """The core (a Toolkit over Store) on this mount, as the tasks build it."""
        from partnercerts import inventory as inventory_mod
        from partnercerts.settings import Settings
        from partnercerts.store import Store
        from partnercerts.toolkit import Toolkit
        from partnercerts.vault import connect
        e = self.env(mount, inventory)
        settings = Settings.from_env(e)
        return Toolkit(settings, inventory_mod.load(settings.inventory), Store(connect(settings, e), settings))

    def seed_active(self, mount: str, inventory: Path) -> int:
        """Every credential of the inventory active, far from renewal, its hosts in sync (none): written
        through the core with check-and-set, as an import and a deploy leave them (test-size keys)."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        from partnercerts import certs, keys
        from partnercerts import csr as csrmod
        from partnercerts.sandbox import Authority
        from partnercerts.store import Index, iso

        creds = self.core(mount, inventory)
        now = dt.datetime.now(dt.timezone.utc)
        authority = Authority(creds.store, 365, test_key_bits=SEED_KEY_BITS)
        ca_pem = authority.ca_pem(now)
        ca_fp = certs.fingerprint(certs.from_pem(ca_pem)[0])
        pool = [rsa.generate_private_key(public_exponent=65537, key_size=SEED_KEY_BITS) for _ in range(SEED_KEY_POOL)]
        pool = [(k, keys.to_pem(k), keys.spki_sha256(k.public_key())) for k in pool]
        pairs = creds.inventory.credentials()
        log(f"seeding {len(pairs)} credentials into mount {mount} ...")
        started = time.perf_counter()

        def one(job):
            n, (partner, application) = job
            store = stores[n % len(stores)]
            key, key_pem, key_sha = pool[n % len(pool)]
            if application is partner.applications[0]:
                store.write(store.account_path(partner.mzp), {"password": secrets.token_urlsafe(18),
                                                             "updated_at": iso(now)}, cas=0)
            cert = certs.from_pem(authority.sign(csrmod.build(partner.subject, key), now))[0]
            serial = certs.serial_hex(cert)
            record = {"key_pem": key_pem, "key_sha256": key_sha, "key_spec": "rsa2048",
                      "cert_pem": certs.to_pem([cert]), "chain_pem": "", "ca_pem": ca_pem,
                      "client_id": Authority.new_client_id(), "serial": serial,
                      "not_before": iso(cert.not_valid_before_utc), "not_after": iso(cert.not_valid_after_utc),
                      "fingerprint_sha256": certs.fingerprint(cert), "p12_password": secrets.token_urlsafe(24),
                      "imported_at": iso(now), "pending_created_at": iso(now), "submitted_at": iso(now),
                      "submission": "sandbox"}
            m, a = partner.mzp, application.name
            store.write(store.history_path(m, a, serial), record, cas=0)
            version = store.write(store.current_path(m, a), record, cas=0)
            store.write(store.hosts_path(m, a), {"hosts": {}, "checked_at": iso(now)}, cas=0)
            store.write_index(m, a, Index(
                serial=serial, not_before=record["not_before"], not_after=record["not_after"],
                client_id=record["client_id"], fingerprint_sha256=record["fingerprint_sha256"], key_sha256=key_sha,
                ca_fingerprint_sha256=ca_fp, key_spec="rsa2048", current_version=str(version),
                hosts_total="0", hosts_in_sync="0", hosts_checked_at=iso(now), updated_at=iso(now)))

        stores = [self.core(mount, inventory).store for _ in range(3)]
        with ThreadPoolExecutor(len(stores)) as pool_exec:
            list(pool_exec.map(one, enumerate(pairs)))
        log(f"seeded {len(pairs)} credentials in {time.perf_counter() - started:.1f} s")
        return len(pairs)

    def current_paths(self, inventory: Path) -> list[str]:
        from partnercerts import inventory as inventory_mod
        inv = inventory_mod.load(inventory)
        return [f"partnercerts/{p.mzp}/apps/{a.name}/current" for p, a in inv.credentials()]

    # -- the table ----------------------------------------------------------------------------
    def add(self, case: str, what: str, figures: list[float], unit: str, baseline: list[float] | None,
            baseline_what: str, *, ratio_kind: str = "faster", per: int | None = None, per_unit: str = "",
            target: str = "", met: bool | None = None, extra: str = "") -> dict:
        fig = statistics.median(figures)
        base = statistics.median(baseline) if baseline else None
        if base is None:
            ratio = None
        elif ratio_kind == "faster":
            ratio = base / fig
        else:  # "of floor": figure / baseline
            ratio = fig / base
        row = {"case": case, "what": what, "figure": fig, "unit": unit, "runs": figures,
               "baseline": base, "baseline_runs": baseline or [], "baseline_what": baseline_what,
               "ratio": ratio, "ratio_kind": ratio_kind,
               "per": (fig * 1000 / per) if per else None, "per_unit": per_unit,
               "target": target, "met": met, "extra": extra}
        self.rows.append(row)
        return row

    # -- cases --------------------------------------------------------------------------------
    def index_mount(self, which: set[str]) -> str:
        """One mount seeded once for status, rotate and memory: the status inventory's partners are the
        first partners of the memory inventory."""
        case = "memory" if "memory" in which else "status"
        p, a = self.size[case]
        mount = self.bao.new_mount(f"{MOUNT_PREFIX}-idx")
        self.seed_active(mount, write_inventory(self.work / "inv-seed", partners_yaml(p, a)))
        return mount

    def case_status_rotate(self, which: set[str], mount: str) -> None:
        p, a = self.size["status"]
        n = p * a
        inv = write_inventory(self.work / "inv-status", partners_yaml(p, a))
        env = self.env(mount, inv)
        paths = "\n".join(self.current_paths(inv))
        hvac_cmd = [PY, "-c", HVAC_READS, self.bao.addr, self.bao.token, mount]
        # warm-up: page cache, pyc files, Vault's caches
        run(invoke("status", "--json"), env)
        run(hvac_cmd, env, stdin=paths)
        for case in ("status", "rotate"):
            if case not in which:
                continue
            cmd = invoke("status", "--json") if case == "status" else invoke("rotate")
            figs, base = [], []
            for r in range(self.repeat):
                pair = [("fig", cmd), ("base", hvac_cmd)]
                for kind, argv in (pair if r % 2 == 0 else pair[::-1]):
                    res = run(argv, env, stdin=paths if kind == "base" else None)
                    if kind == "fig":
                        figs.append(res.wall)
                        self._check_output(case, res, n)
                    else:
                        base.append(loop_seconds(res))
            name = f"status-{short(n)}" if case == "status" else f"rotate-noop-{short(n)}"
            what = (f"`status --json` over {short(n)} credentials, a fresh process" if case == "status" else
                    f"`rotate` over {short(n)} credentials, nothing due, all in sync, a fresh process")
            fig, b = statistics.median(figs), statistics.median(base)
            per = fig * 1000 / n
            self.add(name, what, figs, "s", base,
                     f"{short(n)} hvac read_secret_version of `current`, one by one (read loop only)", per=n,
                     per_unit="ms/cred",
                     target="<=1.5 ms/cred, >=1.5x faster", met=per <= 1.5 and b / fig >= 1.5)
            log(f"{name}: {fig:.3f} s ({per:.2f} ms/cred); hvac baseline {b:.3f} s")

    def _check_output(self, case: str, res: Proc, n: int) -> None:
        if case == "status":
            rows = json.loads(res.out)
            if len(rows) != n or any(r["state"] != "active" for r in rows):
                raise RuntimeError(f"status: expected {n} active rows, got {len(rows)}")
        elif "nothing to do" not in res.out:
            raise RuntimeError(f"rotate was expected to have nothing to do:\n{res.out[-2000:]}")

    def case_memory(self, mount: str) -> None:
        p, a = self.size["memory"]
        n = p * a
        inv = write_inventory(self.work / "inv-memory", partners_yaml(p, a))
        env = self.env(mount, inv)
        rss, walls = [], []
        for _ in range(self.repeat):
            res = run(invoke("status", "--json"), env)
            self._check_output("status", res, n)
            rss.append(res.maxrss_mb)
            walls.append(res.wall)
        peak = statistics.median(rss)
        self.add(f"memory-{short(n)}", f"peak RSS of `status --json` over {short(n)} credentials", rss, "MB",
                 None, "", per=None,
                 target="<200 MB", met=peak < 200,
                 extra=f"wall {statistics.median(walls):.2f} s ({statistics.median(walls) * 1000 / n:.2f} ms/cred)")
        log(f"memory-{short(n)}: {peak:.0f} MB peak RSS")

    def case_csr(self) -> None:
        p, a = self.size["csr"]
        n = p * a
        outbox = self.work / "outbox"
        outbox.mkdir()
        sub = {"method": "outbox", "dir": str(outbox), "to": "connectedcar@mpsa.com"}
        inv = write_inventory(self.work / "inv-csr", partners_yaml(p, a, submission=sub))
        floor_cmd = [PY, "-c", KEYGEN_FLOOR, str(n)]
        all_cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        one_cpu = {min(all_cpus)} if all_cpus else None
        both, one, floor, used = [], [], [], []
        for r in range(self.repeat):
            for label in (("all", "one", "floor") if r % 2 == 0 else ("floor", "one", "all")):
                if label == "floor":
                    floor.append(loop_seconds(run(floor_cmd, os.environ.copy())))
                    continue
                mount = self.bao.new_mount(f"{MOUNT_PREFIX}-csr-{r}-{label}")
                res = run(invoke("rotate", "--no-deploy"), self.env(mount, inv),
                          cpus=one_cpu if label == "one" else None)
                made = res.out.count("new key and CSR; CSR written to the outbox")
                if made != n:
                    raise RuntimeError(f"csr: expected {n} new keys and CSRs, got {made}:\n{res.out[-2000:]}")
                if label == "all":
                    both.append(res.wall)
                    used.append(res.cpu / res.wall)
                else:
                    one.append(res.wall)
        fl = statistics.median(floor)
        c = cores()
        cores_used = statistics.median(used)
        b = statistics.median(both)
        self.add(f"csr-{short(n)}", f"`rotate --no-deploy`, {n} due credentials (keys, CSRs, Vault writes, "
                 f"outbox), all {c} cores", both, "s", floor,
                 f"{short(n)} bare RSA-2048 generations in one process (the floor)", ratio_kind="of floor", per=n,
                 per_unit="ms/cred",
                 target="uses both cores, <=1.2x floor", met=b / fl <= 1.2 and (c < 2 or cores_used >= 1.5),
                 extra=f"{cores_used:.1f} cores busy, {fl / b:.2f}x the floor's speed")
        o = statistics.median(one)
        self.add(f"csr-{short(n)}-1core", "the same with the toolkit and its workers pinned to one core "
                 "(OpenBao free to use the other)", one, "s", floor,
                 f"{short(n)} bare RSA-2048 generations in one process (the floor)", ratio_kind="of floor", per=n,
                 per_unit="ms/cred", target="(reference)", met=None,
                 extra="one core shared by the keys and the Vault calls of each credential")
        log(f"csr-{short(n)}: {b:.2f} s on {c} cores ({cores_used:.1f} busy), {o:.2f} s on 1 core; floor {fl:.2f} s")

    def case_deploy(self) -> None:
        if os.geteuid() != 0:
            self.notes.append("deploy cases skipped: the SSH test hosts need root")
            log("deploy cases skipped: not root")
            return
        missing = [t for t in (testhosts.SSHD, "ssh", "ssh-keygen", "ip", "unshare", "nsenter", "mount")
                   if not shutil.which(t)]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run scripts/install-system-deps (as root)")
        counts = self.size["hosts"]
        hosts = testhosts.TestHosts(self.work / "hosts", max(counts))
        log(f"starting {max(counts)} SSH test hosts ...")
        hosts.up()
        try:
            for count in counts:
                self._deploy_n(hosts, count)
        finally:
            hosts.down()

    def _deploy_n(self, hosts, count: int) -> None:
        app = "svc"
        m = mzp(900)
        every = hosts.hosts
        hosts.hosts = every[:count]
        try:
            text = hosts.inventory_text(extra_vars={"partnercerts_deploy_credentials": [
                {"mzp": m, "app": app, "dest": f"/srv/bench-{count}/{app}", "reload_command": "true"}]})
        finally:
            hosts.hosts = every
        inv = write_inventory(self.work / f"inv-deploy-{count}", partners_yaml(1, 1, first=900, app_names=[app]),
                              text)
        mount = self.bao.new_mount(f"{MOUNT_PREFIX}-deploy-{count}")
        env = self.env(mount, inv)
        ping = [str(Path(PY).parent / "ansible"), "-i", str(inv), "all", "-m", "ping"]
        ping_env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        run(invoke("rotate", "--no-deploy"), env)     # a real key, CSR and sandbox certificate
        self._deploy(env, count, changed=True)      # first release on every host (warms ControlPersist)
        run(ping, ping_env)
        noop, change, floor_noop, floor_change = [], [], [], []
        for _ in range(self.repeat):
            noop.append(self._deploy(env, count, changed=False))
            floor_noop.append(self._ping(ping, ping_env, count))
            run(invoke("csr", "--mzp", m, "--app", app, "--force"), env)  # renew in Vault, hosts untouched
            run(invoke("rotate", "--no-deploy"), env)
            change.append(self._deploy(env, count, changed=True))
            floor_change.append(self._ping(ping, ping_env, count))
        fn, fp = statistics.median(noop), statistics.median(floor_noop)
        self.add(f"deploy-noop-{count}", f"`deploy` (the real playbook) to {count} hosts, nothing to change",
                 noop, "s", floor_noop, f"`ansible -m ping` to the same {count} hosts (one SSH round)",
                 ratio_kind="of floor", target="<=2x floor",
                 met=fn / fp <= 2)
        fc = statistics.median(change)
        self.add(f"deploy-change-{count}", f"`deploy` of one renewed certificate to {count} hosts (stage, "
                 "switch, reload, inspect)", change, "s", floor_change,
                 f"`ansible -m ping` to the same {count} hosts", ratio_kind="of floor", target="-", met=None)
        log(f"deploy-{count}: noop {fn:.2f} s, change {fc:.2f} s; ping {fp:.2f} s")

    def _deploy(self, env: dict, count: int, changed: bool) -> float:
        res = run(invoke("deploy"), env)
        recap = [line for line in res.out.splitlines() if " : ok=" in line]
        if len(recap) != count or any(" failed=0 " not in line or " unreachable=0 " not in line for line in recap):
            raise RuntimeError(f"deploy: expected {count} good hosts:\n{res.out[-3000:]}\n{res.err[-2000:]}")
        if not changed and any(" changed=0 " not in line for line in recap):
            raise RuntimeError(f"deploy: a deploy of nothing new changed something:\n{res.out[-3000:]}")
        if changed and any(" changed=0 " in line for line in recap):
            raise RuntimeError(f"deploy: the renewed certificate did not reach every host:\n{res.out[-3000:]}")
        return res.wall

    def _ping(self, ping: list[str], env: dict, count: int) -> float:
        res = run(ping, env)
        if res.out.count("SUCCESS") != count:
            raise RuntimeError(f"ping: expected {count} SUCCESS:\n{res.out[-2000:]}")
        return res.wall

    # -- output -------------------------------------------------------------------------------
    def table(self) -> str:
        """The table of medians, then one line per case saying what was measured and against what."""
        head = ("case", "median", "baseline", "ratio", "per unit", "target", "met", "notes")
        lines = []
        for r in self.rows:
            fig = f"{r['figure']:.0f} MB" if r["unit"] == "MB" else f"{r['figure']:.2f} s"
            base = "-" if r["baseline"] is None else f"{r['baseline']:.2f} s"
            if r["ratio"] is None:
                ratio = "-"
            elif r["ratio_kind"] == "faster":
                ratio = f"{r['ratio']:.2f}x faster"
            else:
                ratio = f"{r['ratio']:.2f}x floor"
            per = f"{r['per']:.2f} {r['per_unit']}" if r["per"] is not None else "-"
            met = {True: "yes", False: "NO", None: "-"}[r["met"]] if self.args.size == "full" else "(tiny)"
            lines.append((r["case"], fig, base, ratio, per, r["target"] or "-", met, r["extra"] or ""))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
        out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
        out.append("")
        width = max(len(r["case"]) for r in self.rows) if self.rows else 0
        for r in self.rows:
            against = f"; baseline: {r['baseline_what']}" if r["baseline_what"] else ""
            out.append(f"{r['case'].ljust(width)}  {r['what']}{against}")
        return "\n".join(out)

    def header(self) -> str:
        return (f"partnercerts benchmark, size {self.args.size}: median of {self.repeat} run(s); "
                f"{cores()} cores ({os.cpu_count()} CPUs), Python {sys.version.split()[0]}, "
                f"OpenBao {self.bao.version if self.bao else '?'} (dev, loopback, same machine)")

    def main(self) -> int:
        which = set(self.args.cases.split(",")) if self.args.cases else set(ALL_CASES)
        unknown = which - set(ALL_CASES)
        if unknown:
            raise SystemExit(f"bench: unknown case(s) {', '.join(sorted(unknown))}; use {','.join(ALL_CASES)}")
        self.bao = Bao(self.work)
        try:
            mount = self.index_mount(which) if which & {"status", "rotate", "memory"} else ""
            if which & {"status", "rotate"}:
                self.case_status_rotate(which, mount)
            if "csr" in which:
                self.case_csr()
            if "deploy" in which:
                self.case_deploy()
            if "memory" in which:
                self.case_memory(mount)
        finally:
            self.bao.stop()
        print(self.header())
        print(self.table())
        for note in self.notes:
            print(f"note: {note}")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({"size": self.args.size, "repeat": self.repeat,
                                                        "cores": cores(), "cpus": os.cpu_count(),
                                                        "openbao": self.bao.version, "rows": self.rows,
                                                        "notes": self.notes}, indent=2))
        return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full",
                    help="full: 1,000 credentials, 100 CSRs, 10 and 50 hosts, 10,000 for memory; "
                         "tiny: 10 credentials, 2 hosts, one run (for the test suite)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per figure, the median is shown (default: 5, tiny 1)")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(ALL_CASES)} (default: all)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every run's figures to FILE as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, inventories) for inspection")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("bench: --repeat must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="partnercerts-bench-"))
    try:
        return Bench(args, work).main()
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
