"""The benchmark of issues 6 and 14: 1,000 credentials and up to 200 hosts, each figure beside its floor and
beside what a user would write instead.

    scripts/bench [--size full|tiny] [--repeat N] [--cases status,rotate,csr,deploy,memory] [--hosts 10,50,200]
                  [--baselines handwritten,lookup|none] [--json FILE] [--markdown FILE] [--plot FILE.png]

Starts its own OpenBao (dev mode, loopback, a random port) and its own SSH test hosts
(devtools/testhosts.py: one sshd per host in its own network namespace; needs root), seeds Vault
itself, runs every command as a user would (a fresh process, as scripts/inv runs TASK) and prints
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
                                                        and vs a hand-written playbook (baseline
                                                           `handwritten`): one vault_kv2_get lookup,
                                                           run_once; file, copy per file, a PKCS#12,
                                                           a symlink switch and a reload handler
  status-10k      `status --json` over 10,000 credentials (no baseline: the ms per credential)
  memory-10k      peak RSS of the same runs

N is 10, 50 and 200 hosts at the full size (2 at tiny; `--hosts` chooses); every Ansible run (the
toolkit's deploy, ping, the hand-written playbook) has pipelining, ControlPersist and forks = N, and the
table gives the cost per host at each N (`--plot` draws seconds and ms per host against N). status-1k is
also measured against a lookup playbook (baseline `lookup`): one community.hashi_vault vault_kv2_get
query over the same 1,000 `current` records on localhost, then a report of serial, expiry and state.
The baselines' playbooks are in devtools/bench_baselines/; they run with the community `ansible` package
(community.hashi_vault, community.crypto) from a venv of the benchmark's own
(devtools/bench_baselines/requirements.txt, built on first use and cached under .state/bench-venv/, keyed
by the requirements), which also draws the plot: the product's requirements do not grow. Those two ratios
are whole runs, start-up included, as a user sees them.

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
    "full": {"status": (100, 10), "memory": (1000, 10), "csr": (10, 10), "hosts": [10, 50, 200], "repeat": 5},
    "tiny": {"status": (2, 5), "memory": (4, 5), "csr": (2, 5), "hosts": [2], "repeat": 1},
}
ALL_CASES = ("status", "rotate", "csr", "deploy", "memory")
ALL_BASELINES = ("handwritten", "lookup")  # what users write instead: the deploy playbook, the status lookups
BASELINES = Path(__file__).resolve().parent / "bench_baselines"
# Issue 14's targets against them: how many times faster than the user's own playbook.
TARGET_HANDWRITTEN = {"noop": 12.0, "change": 10.0}
TARGET_LOOKUP = 50.0
# And against the floors: status/rotate of 1k ms per credential and times faster than the hvac loop, status of
# 10k ms per credential, deploy to N hosts as a multiple of `ansible -m ping`.
TARGET_PER_CRED, TARGET_HVAC, TARGET_PER_CRED_10K = 0.3, 3.0, 0.1
TARGET_FLOOR = {"noop": 1.15, "change": 1.6}
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
    """A task run exactly as scripts/inv runs it (partnercerts.quick, then Invoke, this repository's tasks.py)."""
    return [PY, "-P", "-m", "partnercerts.quick", "--search-root", str(ROOT), *args]


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


# -- the baselines' own venv ------------------------------------------------------------------

def baseline_venv(cache: Path | None = None) -> Path:
    """The venv of devtools/bench_baselines/requirements.txt (community ansible, hvac, matplotlib), built once
    per requirements and Python version under .state/bench-venv/<key>/; concurrent benches wait for one build."""
    import fcntl
    import hashlib
    requirements = BASELINES / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
    cache = cache or ROOT / ".state" / "bench-venv"
    venv = cache / key
    ready = venv / ".ready"
    if ready.exists():
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return venv
        log(f"building the baselines' venv {venv} (once; ansible, hvac, matplotlib from the package index) ...")
        started = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"pip install -r {requirements} failed (exit {p.returncode}):\n{p.stderr[-3000:]}\n"
                               "run without the users' baselines: --baselines none")
        ready.write_text(requirements.read_text())
        log(f"built the baselines' venv in {time.perf_counter() - started:.0f} s")
    return venv


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
        self.hosts: list[int] = args.host_counts or self.size["hosts"]
        self.baselines: set[str] = args.baseline_set
        self.bao: Bao | None = None
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self._venv: Path | None = None
        self.index_layout: int | None = None  # of the seeded index mount

    # the users' baselines: their playbooks, run by the community `ansible` of the bench's own venv
    def venv(self) -> Path:
        if self._venv is None:
            self._venv = baseline_venv()
        return self._venv

    def baseline_env(self, env: dict, forks: int | None = None) -> dict:
        e = dict(env, ANSIBLE_CONFIG=str(BASELINES / "ansible.cfg"), ANSIBLE_HASHI_VAULT_ADDR=self.bao.addr,
                 VAULT_TOKEN=self.bao.token)
        if forks:
            e["ANSIBLE_FORKS"] = str(forks)
        return e

    def baseline_playbook(self, name: str, inventory: Path | None, extra: dict) -> list[str]:
        extra_file = self.work / f"extra-{name}-{secrets.token_hex(4)}.json"
        extra_file.write_text(json.dumps(extra))
        inv = ["-i", str(inventory)] if inventory else ["-i", "localhost,"]
        return [str(self.venv() / "bin" / "ansible-playbook"), *inv, str(BASELINES / name), "-e", f"@{extra_file}"]

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
        creds.store.upgrade_index(now)  # a fresh mount is layout 2 from its first rotator run: seed it so
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
        self.index_layout = creds.store.index_layout()  # what status and the plan read: reported in the JSON
        log(f"seeded {len(pairs)} credentials (index layout {self.index_layout}) in "
            f"{time.perf_counter() - started:.1f} s")
        return len(pairs)

    def current_paths(self, inventory: Path) -> list[str]:
        from partnercerts import inventory as inventory_mod
        inv = inventory_mod.load(inventory)
        return [f"partnercerts/{p.mzp}/apps/{a.name}/current" for p, a in inv.credentials()]

    # -- the table ----------------------------------------------------------------------------
    def add(self, case: str, what: str, figures: list[float], unit: str, baseline: list[float] | None,
            baseline_what: str, *, ratio_kind: str = "faster", per: int | None = None, per_unit: str = "",
            target: str = "", met: bool | None = None, extra: str = "", alt: list[float] | None = None,
            alt_what: str = "", alt_target: str = "", alt_met: bool | None = None) -> dict:
        """One row; alt is what a user would write instead (ratio: how many times faster the toolkit is)."""
        fig = statistics.median(figures)
        base = statistics.median(baseline) if baseline else None
        alt_median = statistics.median(alt) if alt else None
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
               "target": target, "met": met, "extra": extra,
               "alt": alt_median, "alt_runs": alt or [], "alt_what": alt_what,
               "alt_ratio": alt_median / fig if alt_median is not None else None,
               "alt_target": alt_target, "alt_met": alt_met}
        self.rows.append(row)
        self.save()  # a long run interrupted keeps what it measured
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
        lookup = "status" in which and "lookup" in self.baselines
        if lookup:
            lookup_cmd = self.baseline_playbook("status.yml", None, {
                "bench_mount": mount, "bench_paths": self.current_paths(inv)})
            lookup_env = self.baseline_env(env)
        # warm-up: page cache, pyc files, Vault's caches
        run(invoke("status", "--json"), env)
        run(hvac_cmd, env, stdin=paths)
        if lookup:
            self._check_lookup(run(lookup_cmd, lookup_env), n)
        for case in ("status", "rotate"):
            if case not in which:
                continue
            cmd = invoke("status", "--json") if case == "status" else invoke("rotate")
            figs, base, alt = [], [], []
            for r in range(self.repeat):
                pair = [("fig", cmd), ("base", hvac_cmd)]
                if case == "status" and lookup:
                    pair.append(("alt", lookup_cmd))
                for kind, argv in (pair if r % 2 == 0 else pair[::-1]):
                    if kind == "alt":
                        res = run(argv, lookup_env)
                        self._check_lookup(res, n)
                        alt.append(res.wall)
                        continue
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
                     target=f"<={TARGET_PER_CRED} ms/cred, >={TARGET_HVAC:.0f}x faster",
                     met=per <= TARGET_PER_CRED and b / fig >= TARGET_HVAC,
                     alt=alt or None, alt_what=f"a lookup playbook: one community.hashi_vault vault_kv2_get query "
                     f"over the same {short(n)} `current` records, then a report (whole run)" if alt else "",
                     alt_target=f">={TARGET_LOOKUP:.0f}x faster" if alt else "",
                     alt_met=statistics.median(alt) / fig >= TARGET_LOOKUP if alt else None)
            log(f"{name}: {fig:.3f} s ({per:.2f} ms/cred); hvac baseline {b:.3f} s"
                + (f"; lookup playbook {statistics.median(alt):.2f} s" if alt else ""))

    def _check_lookup(self, res: Proc, n: int) -> None:
        active = res.out.count('"state": "active"')
        if active != n or "ok=2" not in res.out:
            raise RuntimeError(f"lookup playbook: expected {n} active credentials, got {active}:\n{res.out[-2000:]}")

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
        peak, wall = statistics.median(rss), statistics.median(walls)
        self.add(f"status-{short(n)}", f"`status --json` over {short(n)} credentials, a fresh process", walls, "s",
                 None, "", per=n, per_unit="ms/cred", target=f"<={TARGET_PER_CRED_10K} ms/cred",
                 met=wall * 1000 / n <= TARGET_PER_CRED_10K)
        self.add(f"memory-{short(n)}", f"peak RSS of `status --json` over {short(n)} credentials", rss, "MB",
                 None, "", per=None,
                 target="<200 MB", met=peak < 200,
                 extra=f"the same runs as status-{short(n)}")
        log(f"status-{short(n)}: {wall:.2f} s ({wall * 1000 / n:.3f} ms/cred); memory {peak:.0f} MB peak RSS")

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
        counts = self.hosts
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
        env = self.env(mount, inv, ANSIBLE_FORKS=str(count))  # every Ansible run: one fork per host
        ping = [str(Path(PY).parent / "ansible"), "-i", str(inv), "all", "-m", "ping"]
        ping_env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        hand = "handwritten" in self.baselines
        if hand:
            hand_cmd = self.baseline_playbook("deploy.yml", inv, {
                "bench_mount": mount, "bench_path": f"partnercerts/{m}/apps/{app}/current",
                "bench_dest": f"/srv/hand-{count}/{app}", "bench_reload": "true"})
            hand_env = self.baseline_env(env, count)
        mito = self.args.mitogen
        mito_env = dict(env, **mitogen_env()) if mito else env
        run(invoke("rotate", "--no-deploy"), env)     # a real key, CSR and sandbox certificate
        self._deploy(env, count, changed=True)      # first release on every host (warms ControlPersist)
        run(ping, ping_env)
        if hand:
            self._recap("hand-written playbook", run(hand_cmd, hand_env), count, changed=True)
        noop, change, floor_noop, floor_change, hand_noop, hand_change = [], [], [], [], [], []
        mito_noop: list[float] = []
        mito_change: list[float] = []
        for r in range(self.repeat):
            for changed, mine, floor, theirs, engine in ((False, noop, floor_noop, hand_noop, mito_noop),
                                                         (True, change, floor_change, hand_change, mito_change)):
                if changed:  # renew in Vault, hosts untouched
                    run(invoke("csr", "--mzp", m, "--app", app, "--force"), env)
                    run(invoke("rotate", "--no-deploy"), env)
                order = ["mine", "floor"] + (["theirs"] if hand else [])
                for who in (order if r % 2 == 0 else order[::-1]):
                    if who == "mine":
                        mine.append(self._deploy(env, count, changed=changed))
                        if mito:  # the same deploy under Mitogen, right after: nothing new again, or a renewal
                            if changed:
                                run(invoke("csr", "--mzp", m, "--app", app, "--force"), env)
                                run(invoke("rotate", "--no-deploy"), env)
                            engine.append(self._deploy(mito_env, count, changed=changed))
                    elif who == "floor":
                        floor.append(self._ping(ping, ping_env, count))
                    else:
                        theirs.append(self._recap("hand-written playbook", run(hand_cmd, hand_env), count,
                                                  changed=changed))
        hand_what = (f"a hand-written playbook to the same {count} hosts (vault_kv2_get lookup run_once; file, "
                     "copy x4, openssl_pkcs12, symlink, reload handler)")
        fn, fp = statistics.median(noop), statistics.median(floor_noop)
        target = TARGET_HANDWRITTEN["noop"]
        self.add(f"deploy-noop-{count}", f"`deploy` (the real playbook) to {count} hosts, nothing to change",
                 noop, "s", floor_noop, f"`ansible -m ping` to the same {count} hosts (one SSH round)",
                 ratio_kind="of floor", per=count, per_unit="ms/host", target=f"<={TARGET_FLOOR['noop']}x floor",
                 met=fn / fp <= TARGET_FLOOR["noop"], alt=hand_noop or None,
                 alt_what=hand_what + ", nothing to change" if hand else "",
                 alt_target=f">={target:.0f}x faster" if hand else "",
                 alt_met=statistics.median(hand_noop) / fn >= target if hand else None)
        fc, fpc = statistics.median(change), statistics.median(floor_change)
        target = TARGET_HANDWRITTEN["change"]
        self.add(f"deploy-change-{count}", f"`deploy` of one renewed certificate to {count} hosts (stage, "
                 "switch, reload, inspect)", change, "s", floor_change,
                 f"`ansible -m ping` to the same {count} hosts", ratio_kind="of floor", per=count,
                 per_unit="ms/host", target=f"<={TARGET_FLOOR['change']}x floor",
                 met=fc / fpc <= TARGET_FLOOR["change"],
                 alt=hand_change or None,
                 alt_what=hand_what + ", the same renewed certificate" if hand else "",
                 alt_target=f">={target:.0f}x faster" if hand else "",
                 alt_met=statistics.median(hand_change) / fc >= target if hand else None)
        for kind, figures, linear, floor_runs in (("noop", mito_noop, fn, floor_noop),
                                                  ("change", mito_change, fc, floor_change)):
            if figures:
                self.add(f"deploy-{kind}-{count}-mitogen", f"deploy-{kind}-{count} under Mitogen for Ansible "
                         "(strategy mitogen_linear)",
                         figures, "s", floor_runs, f"`ansible -m ping` to the same {count} hosts",
                         ratio_kind="of floor", per=count, per_unit="ms/host",
                         extra=f"{linear / statistics.median(figures):.2f}x the speed of the default strategy")
        log(f"deploy-{count}: noop {fn:.2f} s, change {fc:.2f} s; ping {fp:.2f} s"
            + (f"; mitogen noop {statistics.median(mito_noop):.2f} s, change {statistics.median(mito_change):.2f} s"
               if mito else "")
            + (f"; hand-written noop {statistics.median(hand_noop):.2f} s, change "
               f"{statistics.median(hand_change):.2f} s" if hand else ""))

    def _deploy(self, env: dict, count: int, changed: bool) -> float:
        return self._recap("deploy", run(invoke("deploy"), env), count, changed)

    @staticmethod
    def _recap(who: str, res: Proc, count: int, changed: bool) -> float:
        """The run's wall time, once its recap shows every host reached, and changed exactly when expected."""
        recap = [line for line in res.out.splitlines() if " : ok=" in line]
        if len(recap) != count or any(" failed=0 " not in line or " unreachable=0 " not in line for line in recap):
            raise RuntimeError(f"{who}: expected {count} good hosts:\n{res.out[-3000:]}\n{res.err[-2000:]}")
        if not changed and any(" changed=0 " not in line for line in recap):
            raise RuntimeError(f"{who}: a deploy of nothing new changed something:\n{res.out[-3000:]}")
        if changed and any(" changed=0 " in line for line in recap):
            raise RuntimeError(f"{who}: the renewed certificate did not reach every host:\n{res.out[-3000:]}")
        return res.wall

    def _ping(self, ping: list[str], env: dict, count: int) -> float:
        res = run(ping, env)
        if res.out.count("SUCCESS") != count:
            raise RuntimeError(f"ping: expected {count} SUCCESS:\n{res.out[-2000:]}")
        return res.wall

    # -- output -------------------------------------------------------------------------------
    def table_rows(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """The table of medians: each figure, its floor and what a user would write instead, with the targets."""
        head = ("case", "median", "baseline", "ratio", "alternative", "alt ratio", "per unit", "target", "met",
                "notes")
        yes = {True: "yes", False: "NO", None: "-"}
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
            alt = "-" if r.get("alt") is None else f"{r['alt']:.2f} s"
            alt_ratio = "-" if r.get("alt_ratio") is None else f"{r['alt_ratio']:.1f}x faster"
            per = f"{r['per']:.2f} {r['per_unit']}" if r["per"] is not None else "-"
            targets = [t for t in (r["target"] if r["target"] != "-" else "", r.get("alt_target", "")) if t]
            if self.args.size != "full":
                met = "(tiny)"
            else:
                met = ", ".join([yes[r["met"]]] * bool(r["target"] and r["target"] != "-")
                                + [yes[r.get("alt_met")]] * bool(r.get("alt_target"))) or "-"
            lines.append((r["case"], fig, base, ratio, alt, alt_ratio, per, "; ".join(targets) or "-", met,
                          r["extra"] or ""))
        return head, lines

    def scale_rows(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """Deploy by host count: seconds and ms per host of the toolkit, ping and the hand-written playbook."""
        head = ("hosts", "deploy noop", "deploy change", "ping", "hand-written noop", "hand-written change",
                "noop vs hand", "change vs hand")
        by = {r["case"]: r for r in self.rows}
        cell = lambda s, n: "-" if s is None else f"{s:.2f} s, {s * 1000 / n:.0f} ms/host"  # noqa: E731
        lines = []
        for n in self.hosts:
            noop, change = by.get(f"deploy-noop-{n}"), by.get(f"deploy-change-{n}")
            if not noop or not change:
                continue
            vs = lambda r: "-" if r.get("alt_ratio") is None else f"{r['alt_ratio']:.1f}x faster"  # noqa: E731
            lines.append((str(n), cell(noop["figure"], n), cell(change["figure"], n), cell(noop["baseline"], n),
                          cell(noop.get("alt"), n), cell(change.get("alt"), n), vs(noop), vs(change)))
        return head, lines

    @staticmethod
    def render(head: tuple[str, ...], lines: list[tuple[str, ...]], markdown: bool = False) -> list[str]:
        if markdown:
            fmt = lambda row: "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"  # noqa: E731
            return [fmt(head), fmt(["---"] * len(head))] + [fmt(line) for line in lines]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
        return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]

    def legend(self) -> list[tuple[str, str]]:
        out = []
        for r in self.rows:
            against = f"; baseline: {r['baseline_what']}" if r["baseline_what"] else ""
            if r.get("alt_what"):
                against += f"; alternative: {r['alt_what']}"
            out.append((r["case"], f"{r['what']}{against}"))
        return out

    def table(self, markdown: bool = False) -> str:
        """The table of medians, one line per case saying what was measured and against what, then the
        deploy figures by host count."""
        out = self.render(*self.table_rows(), markdown=markdown)
        out.append("")
        width = max(len(r["case"]) for r in self.rows) if self.rows else 0
        if markdown:
            out += [f"- `{case}`: {what}" for case, what in self.legend()]
        else:
            out += [f"{case.ljust(width)}  {what}" for case, what in self.legend()]
        head, lines = self.scale_rows()
        if lines:
            out += ["", "deploy by host count (median; ms/host = seconds / hosts):", ""] if markdown else \
                ["", "deploy by host count (median; ms/host = seconds / hosts):"]
            out += self.render(head, lines, markdown=markdown)
        return "\n".join(out)

    def header(self) -> str:
        return (f"partnercerts benchmark, size {self.args.size}: median of {self.repeat} run(s); "
                f"{cores()} cores ({os.cpu_count()} CPUs), Python {sys.version.split()[0]}, "
                f"OpenBao {self.bao.version if self.bao else '?'} (dev, loopback, same machine)")

    def data(self) -> dict:
        return {"size": self.args.size, "repeat": self.repeat, "cores": cores(), "cpus": os.cpu_count(),
                "openbao": self.bao.version if self.bao else None, "hosts": self.hosts,
                "baselines": sorted(self.baselines), "index_layout": self.index_layout, "rows": self.rows,
                "notes": self.notes}

    def save(self) -> None:
        """Write --json and --markdown with the rows so far (after every row, and at the end)."""
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.data(), indent=2))
        if self.args.markdown:
            Path(self.args.markdown).write_text(f"{self.header()}\n\n{self.table(markdown=True)}\n"
                                                + "".join(f"\nnote: {n}\n" for n in self.notes))

    def plot(self, png: Path) -> None:
        """Seconds and ms per host against hosts, drawn by devtools/bench_plot.py in the baselines' venv."""
        if not any(r["case"].startswith("deploy-") for r in self.rows):
            self.notes.append(f"no plot written to {png}: the deploy case did not run")
            return
        data = self.work / "plot.json"
        data.write_text(json.dumps(self.data()))
        run([str(self.venv() / "bin" / "python"), str(Path(__file__).resolve().parent / "bench_plot.py"),
             str(data), str(png)], dict(os.environ, MPLCONFIGDIR=str(self.work / "mpl")))
        log(f"plot written to {png}")

    def main(self) -> int:
        which = set(self.args.cases.split(",")) if self.args.cases else set(ALL_CASES)
        unknown = which - set(ALL_CASES)
        if unknown:
            raise SystemExit(f"bench: unknown case(s) {', '.join(sorted(unknown))}; use {','.join(ALL_CASES)}")
        if self.baselines and (("handwritten" in self.baselines and "deploy" in which and os.geteuid() == 0)
                               or ("lookup" in self.baselines and "status" in which) or self.args.plot):
            self.venv()  # built before anything is timed
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
        self.save()
        if self.args.plot:
            self.plot(Path(self.args.plot).resolve())
        return 0


def host_counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected host counts such as 10,50,200") from None
    if not counts or any(not 1 <= n <= testhosts.MAX_HOSTS for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: each host count must be 1 to {testhosts.MAX_HOSTS}")
    return sorted(set(counts))


def baseline_set(text: str) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names == {"none"}:
        return set()
    unknown = names - set(ALL_BASELINES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: use none or a comma-separated subset of {','.join(ALL_BASELINES)}")
    return names


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                 epilog="The module docstring of devtools/bench.py describes every case and baseline.")
    ap.add_argument("--size", choices=sorted(SIZES), default="full",
                    help="full: 1,000 credentials, 100 CSRs, 10, 50 and 200 hosts, 10,000 for memory; "
                         "tiny: 10 credentials, 2 hosts, one run (for the test suite)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per figure, the median is shown (default: 5, tiny 1)")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(ALL_CASES)} (default: all)")
    ap.add_argument("--hosts", dest="host_counts", type=host_counts, default=None, metavar="N,N,...",
                    help="host counts of the deploy cases, e.g. 10,50,200 (default: the size's: full 10,50,200, "
                         f"tiny 2; at most {testhosts.MAX_HOSTS})")
    ap.add_argument("--baselines", dest="baseline_set", type=baseline_set, default=set(ALL_BASELINES),
                    metavar="LIST",
                    help="what users would write instead, measured beside the toolkit: handwritten (the deploy "
                         "playbook, deploy cases), lookup (the status lookups, status case), or none "
                         "(default: handwritten,lookup; they need the bench's own venv, built once from the "
                         "package index under .state/bench-venv/)")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also write every run's figures to FILE as JSON (rewritten after every case: an "
                         "interrupted run keeps what it measured; `python devtools/bench_plot.py FILE PNG` in the "
                         "bench's venv plots it)")
    ap.add_argument("--markdown", default=None, metavar="FILE",
                    help="also write the tables as Markdown to FILE (what README.md's Scale section shows; "
                         "rewritten after every case)")
    ap.add_argument("--plot", default=None, metavar="FILE.png",
                    help="also draw the deploy seconds and ms per host against hosts (toolkit, ping, hand-written "
                         "playbook) to FILE.png (matplotlib, in the bench's own venv)")
    ap.add_argument("--mitogen", action="store_true",
                    help="also run each deploy under Mitogen for Ansible (strategy mitogen_linear), side by side "
                         "with the default strategy (the mitogen package of requirements-dev.txt)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, inventories) for inspection")
    return ap


def mitogen_env() -> dict[str, str]:
    """What makes ansible-playbook run its plays under Mitogen's mitogen_linear strategy (issue 14, target 5):
    measured, not offered (README: Scale)."""
    import importlib.util
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench: --mitogen needs the mitogen package in this venv (requirements-dev.txt pins it)")
    plugins = Path(list(spec.submodule_search_locations)[0]) / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


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
