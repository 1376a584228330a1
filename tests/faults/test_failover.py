"""Vault HA failover: a 3-node OpenBao raft cluster on loopback; `rotate --no-deploy` is given all three
nodes (VAULT_ADDR=n0,n1,n2) and the leader is SIGKILLed while the run writes. The run either completes
through the new leader or fails cleanly (one `error:` line, non-zero) and the next run completes; no
pending key is lost or duplicated: every version of each pending record carries the key that became
current, one key per credential."""
import json
import time

import hvac
import pytest
import requests

from tests.conftest import Raw
from tests.faults.cluster import Cluster
from tests.faults.conftest import MZP, audit, clean_failure, finish, make_world, new_mount, versions

APPS = (("fleet", "rsa3072"), ("big", "rsa3072"), ("telematics", "rsa2048"), ("trips", "rsa2048"))
# When to kill the leader: once the first pending key is in Vault, or once the first certificate is current.
MOMENTS = (("pending", "the first pending key is written"), ("current", "the first certificate is imported"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("raft"), size=3).up()
    try:
        yield c
    finally:
        c.down()


def appeared(client: hvac.Client, mount: str, record: str) -> bool:
    try:
        for app, _ in APPS:
            client.secrets.kv.v2.read_secret_metadata(f"partnercerts/{MZP}/apps/{app}/{record}", mount_point=mount)
            return True
    except (hvac.exceptions.VaultError, requests.RequestException):
        return False
    return False


@pytest.mark.parametrize("moment", [m for m, _ in MOMENTS])
def test_the_leader_dies_while_rotate_writes(cluster, moment, tmp_path, chaos):
    record = chaos(f"vault HA: leader SIGKILLed when {dict(MOMENTS)[moment]} (3-node raft)")
    leader = cluster.wait_leader()
    client = leader.client(cluster.token)
    mount = new_mount(client, wait_nodes=[n for n in cluster.nodes if n.running])
    w = make_world(tmp_path / "w", cluster.vault_addr, cluster.token, mount, client, submission="sandbox", apps=APPS)
    w.extra_env["PARTNERCERTS_VAULT_RETRY_SECONDS"] = "10"  # the default budget: enough for an election
    proc = w.popen("rotate", "--no-deploy")
    deadline = time.monotonic() + 120
    while not appeared(client, mount, moment) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {moment} appeared:\n{proc.communicate()}"
    leader.kill()
    first = finish(proc)
    new_leader = cluster.wait_leader()
    w.raw = Raw(new_leader.client(cluster.token), mount)  # read back through the new leader only
    runs = [first]
    if first.rc != 0:
        assert clean_failure(first), f"not a clean failure ({first.rc}):\n{first.text}"
        runs.append(w.cli()("rotate", "--no-deploy", ok=False))
    last = runs[-1]
    why = ""
    if first.rc != 0:
        text = first.err
        why = (" (a retried write had landed: check-and-set conflict)" if "changed by another run" in text else
               " (stale read-back)" if "read back" in text else
               " (no active node within the retry budget)" if "no active node" in text or "unreachable" in text else
               " (" + text.strip().splitlines()[-1][:60] + ")")
    outcome = ("completed through the new leader" if first.rc == 0 else
               f"failed cleanly{why}, next run completed" if last.rc == 0 else "failed, next run failed too")
    lost, problems = 0, []
    for app, _ in APPS:
        a = audit(w, app)
        lost += a.lost()
        pend = versions(w.raw, f"{MZP}/apps/{app}/pending")
        if {d["key_sha256"] for d in pend} != {a.current} or a.history != {a.current}:
            problems.append(f"{app}: pending keys {[d['key_sha256'][:8] for d in pend]}, current "
                            f"{(a.current or '-')[:8]}, history {[k[:8] for k in a.history]}")
    record.run(outcome, keys_lost=lost)
    cluster.restart(leader)  # back to three nodes for the next run
    assert last.rc == 0, f"{outcome}:\n" + "\n---\n".join(r.text for r in runs)
    rows = json.loads(w.cli()("status", "--json").out)
    assert {r["state"] for r in rows} == {"active"}, rows
    assert not problems and lost == 0, problems


def test_a_standby_listed_first_is_not_read_from(cluster, tmp_path, chaos):
    """VAULT_ADDR names a standby first: OpenBao standbys answer reads from their own, lagging copy, so a
    client that used the first node that answers would read back stale records right after writing them."""
    record = chaos("vault HA: a standby listed first in VAULT_ADDR (3-node raft)")
    leader = cluster.wait_leader()
    standbys = [n for n in cluster.nodes if n is not leader and n.running]
    client = leader.client(cluster.token)
    mount = new_mount(client, wait_nodes=[leader, *standbys])
    w = make_world(tmp_path / "w", ",".join(n.addr for n in (*standbys, leader)), cluster.token, mount, client,
                   submission="sandbox", apps=APPS[2:])
    runs = [w.cli()("rotate", "--no-deploy", ok=False) for _ in range(2)]
    lost = sum(audit(w, app).lost() for app, _ in APPS[2:])
    record.run("completed" if all(r.rc == 0 for r in runs) else "failed", keys_lost=lost)
    assert runs[0].rc == 0 and "done: 2 credential(s) changed" in runs[0].out, runs[0].text
    assert runs[1].rc == 0 and "nothing to do" in runs[1].out, runs[1].text
    assert lost == 0
