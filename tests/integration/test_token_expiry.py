"""Tokens that expire under a run (issue 15, part 3), against a real OpenBao with TTLs of seconds: an AppRole's
token (TTL and max TTL, or a period and an explicit max TTL) is renewed and then replaced by a new login, so the
run completes; a token given as VAULT_TOKEN is renewed while Vault allows it and, once it cannot be, the next
request fails with the line that says so, having changed nothing; the next run, with a valid token, completes.

How many logins a run made is read from Vault itself: the secret ID is generated with a number of uses, and
what is left of them after the run is its lookup's secret_id_num_uses."""
import itertools
import time
import uuid

import pytest
import yaml

from partnercerts import errors
from partnercerts.settings import Settings
from partnercerts.store import Store
from partnercerts.vault import connect

USES = 1000
ROLE = "partnercerts-rotator"


@pytest.fixture
def approle(bao, cli, env):
    """The rotator's AppRole, bootstrapped by the toolkit at a mount of this test's own; `make(**ttls)` sets its
    token TTLs and returns the login environment, `logins()` how many logins its secret ID has made."""
    root = bao.client()
    mount = "ar" + uuid.uuid4().hex[:8]
    cli("vault.bootstrap", env={"VAULT_APPROLE_MOUNT": mount})

    class AppRole:
        env_: dict = {}

        def make(self, **ttls) -> dict:
            root.adapter.post(f"/v1/auth/{mount}/role/{ROLE}", json=ttls)
            role_id = root.auth.approle.read_role_id(ROLE, mount_point=mount)["data"]["role_id"]
            secret = root.adapter.post(f"/v1/auth/{mount}/role/{ROLE}/secret-id", json={"num_uses": USES})
            self.secret_id = secret["data"]["secret_id"]
            cli.secrets.append(self.secret_id)
            self.env_ = {"VAULT_TOKEN": "", "VAULT_APPROLE_MOUNT": mount, "VAULT_ROLE_ID": role_id,
                         "VAULT_SECRET_ID": self.secret_id}
            return self.env_

        def logins(self) -> int:
            seen = root.adapter.post(f"/v1/auth/{mount}/role/{ROLE}/secret-id/lookup",
                                     json={"secret_id": self.secret_id})
            return USES - int(seen["data"]["secret_id_num_uses"])

    yield AppRole()
    root.sys.disable_auth_method(mount)


def settings_of(env: dict, **over) -> Settings:
    return Settings.from_env({**env, **over})


def reads_for(store: Store, seconds: float) -> list[float]:
    """Reads the mount check's path every 0.25 s for `seconds` (each read must succeed); when each read was
    answered (time.monotonic())."""
    answered: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        store.check_mount()
        store.version(store.lock_path())
        answered.append(time.monotonic())
        time.sleep(0.25)
    return answered


def answered_throughout(answered: list[float], seconds: float, ttl: float) -> bool:
    """The reads covered the whole span and no two were further apart than half the token's TTL: every token
    was in use while it lived, so the run kept going only because the client renewed it or logged in again.
    How many reads fit in the span depends on the machine's load and is not asserted."""
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    return answered[-1] - answered[0] >= seconds - ttl and max(gaps) < ttl / 2


@pytest.mark.parametrize("ttls,renewed", [
    ({"token_ttl": "2s", "token_max_ttl": "3s"}, False),
    ({"token_period": "2s", "token_explicit_max_ttl": "4s", "token_ttl": 0, "token_max_ttl": 0}, True),
], ids=["ttl-and-max-ttl", "period-and-explicit-max-ttl"])
def test_a_client_outlives_its_approle_tokens(approle, env, ttls, renewed):
    login = approle.make(**ttls)
    settings = settings_of(env, **login)
    store = Store(connect(settings), settings)
    assert approle.logins() == 1
    answered = reads_for(store, 9)  # three times the max TTL and more, every request answered
    assert answered_throughout(answered, 9, ttl=2), answered
    logins = approle.logins()
    # ttl 2 s / max 3 s: a token lasts 3 s at most, so about 9/3 + 1 logins; period 2 s / max 4 s: renewed
    # every 1.3 s or so, and a new login when the 4 s run out.
    assert 3 <= logins <= 6, logins
    if renewed:
        assert logins <= 5, logins  # renewals: a login per period would make 7 or more


def test_a_periodic_vault_token_is_renewed_for_as_long_as_the_run(bao, env):
    root = bao.client()
    token = root.auth.token.create(policies=["root"], period="3s")["auth"]["client_token"]
    settings = settings_of(env, VAULT_TOKEN=token)
    store = Store(connect(settings), settings)
    answered = reads_for(store, 10)  # 3 periods and more: alive only because the run renewed it
    assert answered_throughout(answered, 10, ttl=3), answered
    # Still valid (lookup-self of an expired token raises); its TTL rounds down to 0 in its last second.
    assert 0 <= root.auth.token.lookup(token)["data"]["ttl"] <= 3


def test_a_vault_token_past_its_max_ttl_fails_at_the_next_write_with_its_line_and_the_next_run_completes(
        bao, env, raw, cli):
    root = bao.client()
    token = root.auth.token.create(policies=["root"], ttl="2s", explicit_max_ttl="3s")["auth"]["client_token"]
    cli.secrets.append(token)
    settings = settings_of(env, VAULT_TOKEN=token)
    store = Store(connect(settings), settings)
    path = f"{store.prefix}/probe"
    store.write(path, {"n": "1"}, cas=0)
    time.sleep(3.5)  # past the explicit max TTL: no renewal can keep it
    before = raw.snapshot()
    with pytest.raises(errors.VaultDenied) as refused:
        store.write(path, {"n": "2"}, cas=1)
    assert str(refused.value) == (f"Vault at {bao.addr} does not accept the token in VAULT_TOKEN: it is invalid, "
                                  "expired or revoked; set VAULT_TOKEN to a valid token, or unset it and set "
                                  "VAULT_ROLE_ID and VAULT_SECRET_ID to log in with the AppRole")
    assert raw.snapshot() == before
    assert raw.read("probe")["data"] == {"n": "1"}
    # The command line says the same, in one line, with its exit code; the next run, with a valid token, completes.
    r = cli("rotate", ok=False, env={"VAULT_TOKEN": token})
    assert r.rc != 0 and "does not accept the token in VAULT_TOKEN" in r.err, r.text
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert raw.snapshot() == before
    cli("rotate")
    assert raw.read("MZP654321/apps/fleet/current")["data"]["serial"]  # renewed, signed by the sandbox


def many_apps(inventory, tmp_path, n: int) -> list[str]:
    path = inventory / "group_vars" / "all" / "partners.yml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    partner = doc["partnercerts_partners"][0]
    partner["applications"] = [{"name": f"app{i:02d}", "key": "rsa4096"} for i in range(n)]  # slow keys: a long run
    partner["submission"] = {"method": "outbox", "dir": str(tmp_path / "outbox"), "to": "pki@mpsa.example"}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return [a["name"] for a in partner["applications"]]


def test_a_rotation_that_outlasts_its_approle_token_completes(approle, inventory, tmp_path, raw, cli):
    apps = many_apps(inventory, tmp_path, 24)
    login = approle.make(token_ttl="1s", token_max_ttl="2s")
    started = time.monotonic()
    r = cli("rotate", env=login)
    took = time.monotonic() - started
    # The run must outlast its token for this test to prove anything: if rotation got this fast, add apps.
    assert took > 3, f"the rotation took {took:.1f} s, not longer than the token's 2 s max TTL: add applications"
    assert approle.logins() >= 2, r.text
    assert {raw.read(f"MZP654321/apps/{a}/pending")["data"]["state"] for a in apps} == {"pending"}
    assert len(list((tmp_path / "outbox").glob("*/*.eml"))) == len(apps)  # every CSR went out
