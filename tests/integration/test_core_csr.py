"""`csr`: key straight into Vault, exact profile, same CSR while pending, one key under concurrency."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from partnercerts import keys
from tests.conftest import ROOT

CRED = "MZP654321/apps/fleet"


def csr_pem(out: str) -> str:
    return out[: out.index("-----END CERTIFICATE REQUEST-----") + len("-----END CERTIFICATE REQUEST-----")] + "\n"


def test_csr_key_lives_only_in_vault_and_matches(cli, raw, tmp_path):
    r = cli("csr", "--mzp", "MZP654321", "--app", "fleet")
    pem = csr_pem(r.out)
    assert "[ dn ]" in r.out and "OU = Programs Partners" in r.out and "O = Free2Move, SAS" in r.out
    check = subprocess.run(["openssl", "req", "-noout", "-verify", "-subject", "-nameopt", "RFC2253,-esc_msb,utf8"],
                           input=pem.encode(), capture_output=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.decode().strip() == ("subject=emailAddress=pki@free2move.example,CN=MZP654321,"
                                             "OU=Programs Partners,O=Free2Move\\, SAS,L=Boulogne-Billancourt,"
                                             "ST=Île-de-France,C=FR")
    pending = raw.read(f"{CRED}/pending")
    assert pending["metadata"]["version"] == 1
    key = serialization.load_pem_private_key(pending["data"]["key_pem"].encode(), None)
    request = x509.load_pem_x509_csr(pem.encode())
    assert keys.spki_sha256(key.public_key()) == keys.spki_sha256(request.public_key())
    assert key.key_size == 2048
    assert pending["data"]["key_sha256"] in r.err
    # The index in custom metadata says pending, without any secret in it.
    meta = raw.index(CRED)
    assert meta["pending_since"] and "key_pem" not in meta
    # Nothing key-like landed on the control node's disk.
    found = subprocess.run(["grep", "-rl", "PRIVATE KEY", str(tmp_path)], capture_output=True, text=True).stdout
    assert found == ""


def test_rerun_returns_same_csr_and_force_replaces_it_keeping_the_old_version(cli, raw):
    first = csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet").out)
    again = cli("csr", "--mzp", "MZP654321", "--app", "fleet")
    assert csr_pem(again.out) == first and "no new key" in again.err
    assert raw.read(f"{CRED}/pending")["metadata"]["version"] == 1
    forced = csr_pem(cli("csr", "--mzp", "MZP654321", "--app", "fleet", "--force").out)
    assert forced != first
    assert raw.read(f"{CRED}/pending")["metadata"]["version"] == 2
    old = raw.read(f"{CRED}/pending", version=1)["data"]
    assert x509.load_pem_x509_csr(old["csr_pem"].encode()).public_key() == \
        x509.load_pem_x509_csr(first.encode()).public_key()


def test_out_writes_csr_and_parameter_file_that_openssl_reproduces(cli, tmp_path):
    out = tmp_path / "fleet.csr"
    r = cli("csr", "--mzp", "MZP654321", "--app", "big", "--out", str(out))
    assert r.out == ""
    conf = tmp_path / "fleet.conf"
    assert "default_bits = 3072" in conf.read_text()
    made = subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "/dev/null",
                           "-config", str(conf)], capture_output=True, check=True).stdout

    def subj(pem):
        return subprocess.run(["openssl", "req", "-noout", "-subject", "-nameopt", "RFC2253,-esc_msb,utf8"],
                              input=pem, capture_output=True, check=True).stdout
    assert subj(made) == subj(out.read_bytes())
    assert x509.load_pem_x509_csr(out.read_bytes()).public_key().key_size == 3072


def test_concurrent_runs_make_one_pending_key(cli, raw, env):
    def one(_):
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "csr",
                               "--mzp", "MZP654321", "--app", "fleet"], env=env, capture_output=True, text=True)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({csr_pem(r.stdout) for r in results}) == 1
    assert raw.read(f"{CRED}/pending")["metadata"]["version"] == 1


def test_unknown_partner_or_app_changes_nothing(cli, raw):
    r = cli("csr", "--mzp", "MZP000000", "--app", "fleet", ok=False)
    assert r.rc == 2 and "--mzp MZP000000: no such partner" in r.err and r.err.count("\n") == 1
    r = cli("csr", "--mzp", "MZP654321", "--app", "nope", ok=False)
    assert r.rc == 2 and "has no application 'nope'" in r.err
    assert raw.snapshot() == {}


def test_a_run_that_loses_the_race_never_overwrites_the_winners_key(env, bao, raw):
    import datetime as dt

    from partnercerts import inventory
    from partnercerts.settings import Settings
    from partnercerts.store import Store
    from partnercerts.toolkit import Toolkit

    settings = Settings.from_env(env)
    inv = inventory.load(settings.inventory)
    now = dt.datetime.now(dt.timezone.utc)

    class Racing(Store):
        """Another run creates its pending key right after this run looked and saw none."""
        fired = False

        def read(self, path):
            rec = super().read(path)
            if path.endswith("/pending") and not self.fired:
                self.fired = True
                Toolkit(settings, inv, Store(bao.client(), settings)).pending.make_csr("MZP654321", "fleet", now)
            return rec

    got = Toolkit(settings, inv, Racing(bao.client(), settings)).pending.make_csr("MZP654321", "fleet", now)
    pending = raw.read(f"{CRED}/pending")
    assert pending["metadata"]["version"] == 1
    assert got.created is False and got.key_sha256 == pending["data"]["key_sha256"]
