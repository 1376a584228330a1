"""playbooks/rotate.yml is as safe as `scripts/inv rotate`: the same partial failures, run through
`scripts/inv rotate` and through ansible-runner (the engine under AWX), leave the same Vault records,
host files, metrics and notifications, finish the run every time, and exit non-zero naming every failure.

Each scenario is one test run once per engine, asserting one expectation; `summary()` reduces what a
run left to what both engines must agree on."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess

import ansible_runner
import pytest
import yaml

from partnercerts.lock import Lock
from partnercerts.settings import Settings
from partnercerts.store import Store
from tests.conftest import ROOT, Cli, Raw, free_port
from tests.faults import conftest as faults
from tests.faults.conftest import new_mount, unseal
from tests.integration.test_rotation_prod import set_global, webhook_server

# The fault tests' real sealable OpenBao and their proxy that seals it on an exact request, as fixtures here too.
sealable, proxies = faults.sealable, faults.proxies

DEMO = "MZP654321"
BROKEN = "MZP777777"
ENGINES = ["inv", "runner"]


@pytest.fixture
def world(inventory, tmp_path):
    """Two local hosts deploying the demo partner's two credentials; a webhook; a metrics file."""
    url, received, stop = webhook_server()
    hosts = {"all": {"children": {"integration": {"hosts": {"a": {}, "b": {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "partnercerts_deploy_credentials": [
            {"mzp": DEMO, "app": app, "dest": f"{tmp_path}/hosts/{{{{ inventory_hostname }}}}/{app}"}
            for app in ("fleet", "big")]}}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (tmp_path / "metrics").mkdir()
    set_global(inventory, partnercerts_notify={"webhook": {"url": url}},
               partnercerts_metrics_textfile=str(tmp_path / "metrics" / "partnercerts.prom"))
    yield {"received": received, "hosts": hosts, "root": tmp_path}
    stop()


def add_broken_partner(inventory):
    """A second partner whose SMTP server is down: its CSR is made but cannot be submitted."""
    path = inventory / "group_vars" / "all" / "partners.yml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["partnercerts_partners"].append({
        "mzp": BROKEN, "country": "FR", "state": "Paris", "locality": "Paris", "organization": "Broken SMTP",
        "email": "pki@broken.example", "applications": [{"name": "fleet"}],
        "submission": {"method": "email", "to": "connectedcar@mpsa.example",
                       "smtp": {"host": "127.0.0.1", "port": free_port(), "security": "none"}}})
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def rotate(engine, cli, env, inventory, tmp_path):
    """(exit code, everything printed) of one rotation run through `engine`."""
    if engine == "inv":
        r = cli("rotate", ok=False)
        return r.rc, r.text
    # As AWX injects a credential: the Vault address and token in the process environment, never in the
    # runner's envvars (which it writes into its private data directory).
    secret_env = {k: v for k, v in env.items() if k.startswith("VAULT_")}
    run_env = {k: v for k, v in env.items() if k.startswith("PARTNERCERTS_")}
    run_env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    private = tmp_path / f"runner-{len(list(tmp_path.glob('runner-*')))}"
    private.mkdir()
    saved = dict(os.environ)
    os.environ.update(secret_env)
    try:
        r = ansible_runner.run(private_data_dir=str(private), playbook=str(ROOT / "playbooks" / "rotate.yml"),
                               inventory=str(inventory), envvars=run_env, quiet=True, timeout=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = r.stdout.read()
    cli.assert_clean(type("R", (), {"text": text})())  # no secret, no traceback, as for the task
    for path in private.rglob("*"):  # nor in what the runner keeps: its job events, stdout, env files
        if path.is_file():
            data = path.read_text(errors="replace")
            if path.name == "command":  # the runner's record of the job's command and whole environment
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "env"})
            assert "PRIVATE KEY" not in data and all(s not in data for s in cli.secrets), path
    return r.rc, text


def served(world, host, app):
    path = world["root"] / "hosts" / host / app / "current" / "client.crt"
    if not path.exists():
        return None
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return out.strip().removeprefix("serial=")


def summary(world, raw, cli):
    """What a run left, reduced to what every engine must agree on."""
    rows = {r["mzp"] + "/" + r["app"]: r for r in json.loads(cli("status", "--json").out)}
    serials = {k: r["serial"] for k, r in rows.items()}
    prom = (world["root"] / "metrics" / "partnercerts.prom").read_text()
    metric_lines = sorted(re.sub(r" [0-9.e+-]+$", " N", line) for line in prom.splitlines()
                          if line and not line.startswith("#"))
    kinds = sorted(e["kind"] + " " + e["mzp"] + "/" + e["app"] for batch in world["received"]
                   for e in batch["events"])
    runs = raw.read("runs/rotate")
    return {
        "states": {k: (r["state"], r["pending_stage"], r["hosts_in_sync"], r["hosts_total"]) for k, r in rows.items()},
        "hosts": {(h, app): served(world, h, app) == serials[f"{DEMO}/{app}"] and serials[f"{DEMO}/{app}"] is not None
                  for h in ("a", "b") for app in ("fleet", "big")},
        "metrics": metric_lines,
        "notified": kinds,
        "lock": raw.read("locks/rotate")["data"]["state"],
        "run_recorded": bool(runs and runs["data"].get("last_run")),
        "succeeded": bool(runs and runs["data"].get("last_success")),
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_a_partner_whose_smtp_is_down_does_not_stop_the_others(engine, cli, raw, env, inventory, tmp_path, world):
    add_broken_partner(inventory)
    rc, text = rotate(engine, cli, env, inventory, tmp_path)
    assert rc != 0, text
    last = text.strip().splitlines()[-12:]
    assert any(f"{BROKEN}/fleet" in line and "127.0.0.1" in line for line in last), "\n".join(last)
    got = summary(world, raw, cli)
    assert got["states"] == {f"{DEMO}/fleet": ("active", "issued", 2, 2), f"{DEMO}/big": ("active", "issued", 2, 2),
                             f"{BROKEN}/fleet": ("pending", "created", None, None)}, text[-4000:]
    assert all(got["hosts"].values()), got["hosts"]
    assert got["lock"] == "released" and got["run_recorded"] and not got["succeeded"]
    assert f"certificate_imported {DEMO}/fleet" in got["notified"] and f"deployed {DEMO}/big" in got["notified"]
    assert f"rotation_failed {BROKEN}/fleet" in got["notified"]  # the failure is notified, not only in the log
    assert any(line.startswith("partnercerts_certificate_expiration") and BROKEN not in line
               for line in got["metrics"])
    # The next run, with the SMTP server still down, retries only what failed, and still says so.
    rc2, text2 = rotate(engine, cli, env, inventory, tmp_path)
    assert rc2 != 0 and f"{BROKEN}/fleet" in text2
    assert summary(world, raw, cli)["states"] == got["states"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_host_down_is_a_named_failure_and_the_run_is_finished(engine, cli, raw, env, inventory, tmp_path, world):
    hosts = world["hosts"]
    group = hosts["all"]["children"]["integration"]["hosts"]
    group["b"] = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": free_port(),
                  "ansible_user": "nobody", "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes"}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    rc, text = rotate(engine, cli, env, inventory, tmp_path)
    assert rc != 0, text
    last = "\n".join(text.strip().splitlines()[-15:])
    assert "b" in last and ("unreachable" in last.lower() or "UNREACHABLE" in last), last
    got = summary(world, raw, cli)
    assert got["states"] == {f"{DEMO}/fleet": ("active", "issued", 1, 2), f"{DEMO}/big": ("active", "issued", 1, 2)}
    assert got["hosts"] == {("a", "fleet"): True, ("a", "big"): True, ("b", "fleet"): False, ("b", "big"): False}
    assert got["lock"] == "released" and got["run_recorded"] and not got["succeeded"]
    assert f"deploy_failed {DEMO}/fleet" in got["notified"] and f"deploy_failed {DEMO}/big" in got["notified"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_holding_the_lock_makes_the_other_change_nothing(engine, cli, raw, env, inventory, tmp_path, world, bao):
    lock = Lock(Store(bao.client(), Settings.from_env(env)))
    assert not lock.acquire("another run (test)", dt.datetime.now(dt.timezone.utc), pid=os.getpid())
    before = raw.snapshot()
    rc, text = rotate(engine, cli, env, inventory, tmp_path)
    assert rc == 0 and "another rotation holds the lock: another run (test)" in text, text
    assert raw.snapshot() == before
    assert not (world["root"] / "hosts").exists()
    lock.release(dt.datetime.now(dt.timezone.utc))


@pytest.fixture
def sealed_world(world, env, inventory, tmp_path, sealable, proxies):
    """The same world on a single-node raft OpenBao that the test seals for real, reached through a proxy
    that seals it right after a chosen request: (env, cli, raw, proxy)."""
    client = sealable.client()
    proxy = proxies(sealable.nodes[0].addr, sealable.token)
    mount = new_mount(client)
    e = {**env, "VAULT_ADDR": proxy.addr, "VAULT_TOKEN": sealable.token, "PARTNERCERTS_KV_MOUNT": mount,
         "PARTNERCERTS_VAULT_RETRY_SECONDS": "0.3"}
    c = Cli(e, tmp_path)
    c.secrets.append(sealable.token)
    yield e, c, Raw(client, mount), proxy
    proxy.restore()
    unseal(sealable)


@pytest.mark.parametrize("engine", ENGINES)
def test_vault_sealed_after_the_first_import_is_notified_and_the_next_run_finishes(
        engine, inventory, tmp_path, world, sealable, sealed_world):
    env, cli, raw, proxy = sealed_world
    # The first credential is issued and imported whole (index derived last); seal as the second one starts.
    proxy.arm("POST", rf"/data/partnercerts/{DEMO}/apps/big/pending$", when="before", action="seal")
    rc, text = rotate(engine, cli, env, inventory, tmp_path)
    assert proxy.fired.is_set(), f"the fault never fired; writes: {proxy.writes()}"
    assert rc != 0, text
    last = "\n".join(text.strip().splitlines()[-6:])
    assert "is sealed" in last and "unseal it" in last and f"{DEMO}/big" in last, last
    # Nothing is silent: the import done, the renewal that failed and the run left unfinished are notified, and the
    # textfile says a run ran without success (the credential samples wait for a run that can read Vault).
    kinds = sorted(e["kind"] + " " + e["mzp"] + "/" + e["app"] for batch in world["received"] for e in batch["events"])
    assert kinds == [f"certificate_imported {DEMO}/fleet", "rotation_failed /", f"rotation_failed {DEMO}/big"], kinds
    run_failed = [e for batch in world["received"] for e in batch["events"] if not e["mzp"]][0]
    assert "is sealed" in run_failed["message"] and f"{DEMO}/fleet" in run_failed["message"], run_failed
    prom = (world["root"] / "metrics" / "partnercerts.prom").read_text()
    assert re.search(r"^partnercerts_last_run_timestamp_seconds [0-9]+$", prom, re.M), prom
    assert "partnercerts_last_success" not in prom, prom
    assert not any(served(world, h, a) for h in "ab" for a in ("fleet", "big"))  # the hosts could not read Vault

    unseal(sealable)
    got = summary(world, raw, cli)
    assert got["states"][f"{DEMO}/fleet"][0] == "active" and got["states"][f"{DEMO}/big"][0] != "active", got
    assert got["lock"] == "held" and not got["run_recorded"], got  # Vault was sealed: nothing could be recorded
    # Unsealed, the next run takes over the lock of the run that is over and finishes the job.
    world["received"].clear()
    rc2, text2 = rotate(engine, cli, env, inventory, tmp_path)
    assert rc2 == 0, text2
    assert "took over the rotation lock" in text2 if engine == "inv" else "holds the lock" not in text2
    got = summary(world, raw, cli)
    assert got["states"] == {f"{DEMO}/fleet": ("active", "issued", 2, 2), f"{DEMO}/big": ("active", "issued", 2, 2)}
    assert all(got["hosts"].values()) and got["lock"] == "released" and got["succeeded"], got
    assert f"certificate_imported {DEMO}/big" in got["notified"] and f"deployed {DEMO}/fleet" in got["notified"]
