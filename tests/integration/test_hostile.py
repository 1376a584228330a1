"""Hostile and broken input through the real CLI, from the generated corpus (tests/fixtures/make_corpus.py).

Every item is refused with exit code 2 and one line on stderr that names the input, the reason and
the fix, and Vault does not change (a raw snapshot of every path and version before and after each
item). Items of one kind share one Vault mount and one pending key (refusals change nothing, which
each snapshot proves); all failures of a kind are reported together.

Relative or unnormalised deploy destinations are refused by the release module on the host
(over real SSH), and an absolute destination full of shell characters is taken literally.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEMO_PARTNER, Cli, Raw
from tests.fixtures import make_corpus
from tests.integration.test_core_csr import csr_pem

MZP, APP = "MZP654321", "fleet"
MAX_LINE = 600  # one line a human reads: never a dump of the input
# Secrets planted in the corpus (a password and one-time tokens in links): never printed.
PLANTED = ("Us3rInf0Pa55", "0ffL1stT0k3n", "PlainHttpT0k3n")


def refusal(r, item: make_corpus.Item, *names: str) -> list[str]:
    """What is wrong with a refusal: [] when it is exit 2 (bad input) or 6 (the gate refused the certificate)
    with one clear line naming one of `names`."""
    problems = []
    if r.rc not in (2, 6):
        problems.append(f"exit {r.rc}, not 2 or 6")
    lines = r.err.splitlines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    errors = [line for line in lines if not line.startswith("warning: ")]
    if item.kind != "eml" and warnings:
        problems.append(f"unexpected warnings {warnings}")
    if any(not w.startswith(f"warning: {item.path}: ") for w in warnings):
        problems.append(f"a warning does not name {item.path}: {warnings}")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines, not 1: {r.err[:400]!r}")
        return problems
    line = errors[0]
    if not line.startswith("error: "):
        problems.append(f"does not start with 'error: ': {line[:200]!r}")
    if len(line) > MAX_LINE:
        problems.append(f"error line is {len(line)} characters long: {line[:200]!r}…")
    if not any(n in line for n in names):
        problems.append(f"does not name the input ({names[0]}): {line[:300]!r}")
    for part in (item.expect, item.fix):
        if part not in line:
            problems.append(f"lacks {part!r}: {line[:MAX_LINE]!r}")
    return problems


@pytest.fixture(scope="module")
def shared(bao, tmp_path_factory):
    """One KV v2 mount, inventory and CLI for the module (the per-test fixtures are function-scoped)."""
    base = tmp_path_factory.mktemp("hostile")
    inv = base / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (inv / "group_vars" / "all" / "partners.yml").write_text(DEMO_PARTNER, encoding="utf-8")
    (base / "home").mkdir()
    mount = "h" + uuid.uuid4().hex[:10]
    client = bao.client()
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PARTNERCERTS_"))}
    env.update(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.token, PARTNERCERTS_KV_MOUNT=mount,
               PARTNERCERTS_INVENTORY=str(inv), PARTNERCERTS_STATE_DIR=str(base / "state"), HOME=str(base / "home"),
               # Links in the corpus never match: no e-mail item may reach the network.
               PARTNERCERTS_DOWNLOAD_HOSTS="127.0.0.1")
    cli = Cli(env, base)
    cli.secrets += [bao.token, *PLANTED]
    yield cli, Raw(client, mount), base
    client.sys.disable_secrets_engine(mount)


@pytest.fixture(scope="module")
def corpus(shared):
    """The corpus, its certificates made for the pending key of MZP654321/fleet in the shared mount."""
    cli, _, base = shared
    pem = csr_pem(cli("csr", "--mzp", MZP, "--app", APP).out)
    return make_corpus.make_all(base / "corpus", csr_pem=pem.encode())


def check_all(items, run, snapshot) -> list[str]:
    failures = []
    for item in items:
        before = snapshot()
        names, r = run(item)
        problems = refusal(r, item, *names)
        if snapshot() != before:
            problems.append("Vault changed")
        failures += [f"{item.name}: {p}" for p in problems]
    return failures


def test_every_hostile_certificate_is_refused_in_one_line_and_vault_is_unchanged(shared, corpus):
    cli, raw, _ = shared
    items = corpus.of("cert")
    assert len(items) >= 45

    def run(item):
        ca = corpus.root / item.value
        return [str(item.path)], cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(item.path),
                                     "--ca", str(ca), "--client-id", "cid-hostile", ok=False)
    failures = check_all(items, run, raw.snapshot)
    assert not failures, f"{len(failures)} problem(s) in {len(items)} items:\n" + "\n".join(failures)


def test_every_hostile_ca_file_is_refused_in_one_line_and_vault_is_unchanged(shared, corpus):
    cli, raw, _ = shared
    items = corpus.of("ca")

    def run(item):
        # The CA file is named when it is unreadable; the certificate when it does not chain to it.
        return [str(item.path), str(corpus.control)], cli(
            "import-cert", "--mzp", MZP, "--app", APP, "--cert", str(corpus.control), "--ca", str(item.path),
            "--client-id", "cid-hostile", ok=False)
    failures = check_all(items, run, raw.snapshot)
    assert not failures, "\n".join(failures)


def test_every_hostile_reply_email_is_refused_in_one_line_and_vault_is_unchanged(shared, corpus):
    cli, raw, _ = shared
    items = corpus.of("eml")

    def run(item):
        # A refused link is named by its URL (shown without user, password or query), else the file.
        return [str(item.path), f"://{make_corpus.OFF_LIST_HOST}/"], cli(
            "import-cert", "--mzp", MZP, "--app", APP, "--eml", str(item.path), ok=False)
    failures = check_all(items, run, raw.snapshot)
    assert not failures, "\n".join(failures)


def test_every_hostile_inventory_is_refused_by_status_in_one_line_and_vault_is_unchanged(shared, corpus):
    cli, raw, _ = shared
    items = corpus.of("inventory")
    assert len(items) >= 35

    def run(item):
        return [str(item.path / "group_vars" / "all" / "partners.yml")], cli(
            "status", ok=False, env={"PARTNERCERTS_INVENTORY": str(item.path)})
    failures = check_all(items, run, raw.snapshot)
    assert not Path("/tmp/partnercerts-pwned").exists()
    assert not failures, "\n".join(failures)


def test_the_corpus_control_certificate_imports(shared, corpus):
    """The refusals above are for each item's defect: the corpus's own good certificate goes through."""
    cli, raw, _ = shared
    before = raw.snapshot()
    r = cli("import-cert", "--mzp", MZP, "--app", APP, "--cert", str(corpus.control), "--ca", str(corpus.ca),
            "--client-id", "cid-control")
    assert "imported serial" in r.out
    assert raw.snapshot() != before
    assert raw.read(f"{MZP}/apps/{APP}/current")["data"]["client_id"] == "cid-control"


def test_free_text_with_shell_characters_is_kept_exactly_and_never_interpreted(cli, inventory, tmp_path):
    """Subject fields may hold shell and OpenSSL-config metacharacters: the CSR and the OpenSSL parameter
    file carry them literally, and `openssl req -config` reads back the same subject."""
    doc = yaml.safe_load((inventory / "group_vars" / "all" / "partners.yml").read_text(encoding="utf-8"))
    canary = Path(f"/tmp/pc-{uuid.uuid4().hex[:6]}")
    doc["partnercerts_partners"][0].update(
        organization=f"Acme $(touch {canary}) `id` #x; ${{E}}", locality='Villeneuve-d\'Ascq "Q" \\B',
        state="Île & <de>")
    (inventory / "group_vars" / "all" / "partners.yml").write_text(yaml.safe_dump(doc, allow_unicode=True),
                                                                   encoding="utf-8")
    cli("csr", "--mzp", MZP, "--app", APP, "--out", str(tmp_path / "f.csr"))
    subject = ["-noout", "-subject", "-nameopt", "RFC2253,-esc_msb"]
    ours = subprocess.run(["openssl", "req", "-in", str(tmp_path / "f.csr"), *subject],
                          capture_output=True, text=True, check=True).stdout
    again = subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "/dev/null",
                            "-config", str(tmp_path / "f.conf"), *subject], capture_output=True, text=True, check=True)
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    req = x509.load_pem_x509_csr((tmp_path / "f.csr").read_bytes())
    partner = doc["partnercerts_partners"][0]
    for oid, field in ((NameOID.ORGANIZATION_NAME, "organization"), (NameOID.LOCALITY_NAME, "locality"),
                       (NameOID.STATE_OR_PROVINCE_NAME, "state")):
        assert req.subject.get_attributes_for_oid(oid)[0].value == partner[field]
    assert again.stdout.strip() == ours.strip()
    assert not canary.exists()


# -- destinations, over real SSH ------------------------------------------------------------------


def test_deploy_refuses_relative_and_unnormalised_destinations_on_the_host(ssh_hosts, cli, raw, inventory):
    """Each host gets one credential at a hostile dest; the module refuses it before touching anything,
    the run names each host and why, and a dest full of shell characters is created literally."""
    cli("rotate", "--no-deploy")
    root = f"/srv/h{uuid.uuid4().hex[:8]}"
    a, b, c = [h.name for h in ssh_hosts.hosts]
    dests = make_corpus.HOSTILE_DESTS
    hostile = {a: dests["dest/relative_dotdot"], b: dests["dest/dotdot"]}
    literal = make_corpus.LITERAL_DEST.format(root=root)
    doc = yaml.safe_load(ssh_hosts.inventory_text())
    hosts = doc["all"]["children"]["integration"]["hosts"]
    for host, (value, _) in hostile.items():
        hosts[host]["partnercerts_deploy_credentials"] = [{"mzp": MZP, "app": APP, "dest": value.format(root=root)}]
    hosts[c]["partnercerts_deploy_credentials"] = [{"mzp": MZP, "app": APP, "dest": f"{root}/{APP}"},
                                                   {"mzp": MZP, "app": "big", "dest": literal}]
    (inventory / "hosts.yml").write_text(yaml.safe_dump(doc))
    landing = [Path("/tmp/partnercerts-hostile"), Path("/root/partnercerts-hostile"), Path("/partnercerts-hostile")]
    try:
        r = cli("deploy", ok=False)
        assert r.rc != 0
        for host, (_value, why) in hostile.items():
            line = next((x for x in r.err.splitlines() if x.strip().startswith(f"{host}: ")), "")
            assert why in line and make_corpus.DEST_RULE in line and "(current left as it was)" in line, r.err
            # Nothing on the host: not under /srv, and not where '..' or the login directory would lead.
            assert ssh_hosts.run_in_host(host, ["find", "/srv", "-name", "partnercerts-hostile"]).stdout == ""
        assert not any(p.exists() for p in landing)
        assert f"{c}:" not in r.err
        ok = ssh_hosts.run_in_host(c, ["openssl", "x509", "-noout", "-serial", "-in", f"{literal}/current/client.crt"])
        assert ok.returncode == 0, ok.stderr
        assert ssh_hosts.run_in_host(c, ["test", "-e", f"{root}/pwned"]).returncode != 0
        assert ssh_hosts.run_in_host(c, ["test", "-e", f"{root}/pwned2"]).returncode != 0
        assert re.search(r"^\$\(touch ", ssh_hosts.run_in_host(c, ["ls", root]).stdout, re.M)
    finally:
        for host in (a, b, c):
            ssh_hosts.run_in_host(host, ["rm", "-rf", root])
        for p in landing:
            if p.exists():
                shutil.rmtree(p)
