"""The host side of a release (plugins/modules/release.py, partnercerts.psa.release) on a real filesystem with
real openssl."""
import base64
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization

from partnercerts import keys
from partnercerts.profile import Subject
from tests.conftest import ROOT
from tests.fixtures.make_corpus import DEST_RULE, HOSTILE_DESTS, LITERAL_DEST
from tests.pki import CA, key

spec = importlib.util.spec_from_file_location("partnercerts_psa_release", ROOT / "plugins/modules/release.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

SUBJECT = Subject(mzp="MZP128745", country="FR", state="Paris", locality="Paris", organization="X",
                  email="a@b.example")
NOW = dt.datetime.now(dt.timezone.utc)


def files(cert_key, signing_key=None, days=365, not_before=None):
    ca = CA(now=NOW)
    leaf = ca.issue((signing_key or cert_key).public_key(), SUBJECT.to_name(), now=NOW, days=days,
                    not_before=not_before)
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    content = {"client.crt": pem, "client.key": keys.to_pem(cert_key).encode(),
               "ca.crt": ca.cert.public_bytes(serialization.Encoding.PEM), "client.p12": b"p12", "client.env": b"A=1\n"}
    modes = {"client.crt": "0644", "client.key": "0600", "ca.crt": "0644", "client.p12": "0600", "client.env": "0600"}
    return {n: {"content": base64.b64encode(c).decode(), "mode": modes[n]} for n, c in content.items()}


def staged(releases, name, release_id, spec_files):
    """stage() as the module calls it: the contents and the modes apart."""
    mod.stage(str(releases), name, release_id, {n: v["content"] for n, v in spec_files.items()},
              {n: int(v["mode"], 8) for n, v in spec_files.items()}, -1, -1)


@pytest.mark.parametrize("case,match", [
    ("other_key", "client.key does not match client.crt; refusing to switch"),
    ("expired", "is not valid now"),
    ("not_yet", "is not valid now"),
])
def test_stage_refuses_and_leaves_nothing_behind(tmp_path, case, match):
    k = key()
    spec_files = {"other_key": lambda: files(k, signing_key=key()),
                  "expired": lambda: files(k, days=10, not_before=NOW - dt.timedelta(days=20)),
                  "not_yet": lambda: files(k, not_before=NOW + dt.timedelta(days=1))}[case]()
    releases = tmp_path / "releases"
    releases.mkdir()
    with pytest.raises(mod.Refused, match=match):
        staged(releases, "01", "rid", spec_files)
    assert os.listdir(releases) == []


def test_stage_then_switch_then_prune_keeps_current_and_previous(tmp_path):
    dest = tmp_path / "d"
    releases = dest / "releases"
    releases.mkdir(parents=True)
    names = []
    for i in range(5):
        name = f"0{i}"
        staged(releases, name, f"rid{i}", files(key()))
        os.utime(releases / name, (1000 + i, 1000 + i))
        mod.switch(str(dest), name)
        names.append(name)
    assert os.readlink(dest / "current") == "releases/04"
    assert oct((releases / "04" / "client.key").stat().st_mode & 0o777) == "0o600"
    assert oct((releases / "04").stat().st_mode & 0o777) == "0o750"
    mod.switch(str(dest), "00")  # an old release made current again is protected too
    removed = mod.prune(str(releases), 2, {"00", "04"})
    assert sorted(os.listdir(releases)) == ["00", "03", "04"] and sorted(removed) == ["01", "02"]
    manifest = mod.read_manifest(str(releases / "03"))
    assert manifest["release_id"] == "rid3" and mod.integrity(str(releases / "03"), manifest, -1, -1, None) == []
    (releases / "03" / "client.env").write_text("B=2\n")
    assert mod.integrity(str(releases / "03"), manifest, -1, -1, None) == [
        "client.env was changed since it was deployed"]


def test_switch_refuses_a_real_directory_named_current(tmp_path):
    (tmp_path / "current").mkdir()
    with pytest.raises(mod.Refused, match="is not a symlink"):
        mod.current_target(str(tmp_path))


@pytest.mark.parametrize("name", sorted(HOSTILE_DESTS))
def test_a_relative_or_unnormalised_dest_is_refused_before_anything_is_touched(name):
    value, why = HOSTILE_DESTS[name]
    dest = value.format(root="/srv/t")
    refused = mod.check_dest(dest)
    assert refused and why in refused and DEST_RULE in refused and "\n" not in refused


def test_an_absolute_normalised_dest_is_accepted_even_with_shell_characters():
    assert mod.check_dest("/etc/psa/fleet") is None
    assert mod.check_dest(LITERAL_DEST.format(root="/srv/t")) is None  # taken literally: no shell sees it


def run_module(tmp_path, **args):
    """The module as Ansible runs it on a host: its own process, its arguments in a file, real openssl and sh."""
    path = tmp_path / f"args-{len(list(tmp_path.glob('args-*')))}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    p = subprocess.run([sys.executable, str(ROOT / "plugins/modules/release.py"), str(path)],
                       capture_output=True, text=True, timeout=60)
    return json.loads(p.stdout)


def present(tmp_path, dest, serial, spec_files, **extra):
    """state=present with activate, as the action plugin calls it: the secret contents and their modes apart."""
    return run_module(tmp_path, dest=str(dest), serial=serial, release_id=f"rid-{serial}",
                      files={n: v["content"] for n, v in spec_files.items()},
                      modes={n: v["mode"] for n, v in spec_files.items()}, activate=True, **extra)


@pytest.fixture
def service(tmp_path):
    """A service's commands: validate and reload log the release current points at; validate fails while
    `bad` exists, the next reload fails once `fail-reload` exists."""
    dest, log = tmp_path / "svc", tmp_path / "reloads"
    cmds = {"validate_command": f"echo \"validate $(readlink {dest}/current)\" >> {log}; test ! -e {tmp_path}/bad",
            "reload_command": f"echo \"reload $(readlink {dest}/current)\" >> {log}; "
                              f"if [ -e {tmp_path}/fail-reload ]; then rm {tmp_path}/fail-reload; "
                              "echo reload refused >&2; exit 3; fi"}
    return dest, log, cmds


def test_activate_switches_validates_reloads_and_inspects_in_one_call(tmp_path, service):
    dest, log, cmds = service
    k = key()
    first = present(tmp_path, dest, "01", files(k), **cmds)
    assert not first.get("failed"), first
    assert first["switched"] and first["activated"] and first["changed"] and first["problems"] == []
    assert first["key_matches"] and first["release"] == "01" and first["present"]
    assert log.read_text().splitlines() == ["validate releases/01", "reload releases/01"]
    assert not (dest / ".reload-pending").exists()
    again = present(tmp_path, dest, "01", files(k), **cmds)  # nothing to do: no command runs
    assert not again["changed"] and "activated" not in again
    assert len(log.read_text().splitlines()) == 2


@pytest.mark.parametrize("fails", ["reload", "validate"])
def test_a_failing_reload_or_validate_switches_back_and_reloads_the_previous_release(tmp_path, service, fails):
    dest, log, cmds = service
    present(tmp_path, dest, "01", files(key()), **cmds)
    (tmp_path / ("fail-reload" if fails == "reload" else "bad")).touch()
    second = present(tmp_path, dest, "02", files(key()), **cmds)
    assert second["failed"] and second["rolled_back"] and second["release"] == "01"
    if fails == "reload":
        assert second["msg"] == "reload_command failed: non-zero return code 3: reload refused (switched back to 01)"
        assert log.read_text().splitlines()[2:] == ["validate releases/02", "reload releases/02", "reload releases/01"]
    else:
        assert second["msg"] == "validate_command failed: non-zero return code 1 (switched back to 01)"
        assert log.read_text().splitlines()[2:] == ["validate releases/02", "reload releases/01"]
    assert not (dest / ".reload-pending").exists()  # the service runs on 01 again: recorded
    assert os.readlink(dest / "current") == "releases/01"


def test_a_reload_left_pending_by_an_interrupted_deploy_is_done_by_the_next_call(tmp_path, service):
    dest, log, cmds = service
    k = key()
    present(tmp_path, dest, "01", files(k), **cmds)
    (dest / ".reload-pending").write_text("01\n")  # as a deploy killed between its switch and its reload leaves it
    (tmp_path / "fail-reload").touch()
    failed = present(tmp_path, dest, "01", files(k), **cmds)
    assert failed["failed"] and not failed["rolled_back"]
    assert failed["msg"].endswith("(current left as it was)") and (dest / ".reload-pending").exists()
    done = present(tmp_path, dest, "01", files(k), **cmds)
    assert done["changed"] and done["activated"] and not done["switched"]
    assert log.read_text().splitlines()[-1] == "reload releases/01" and not (dest / ".reload-pending").exists()


def test_a_failing_command_never_quotes_a_secret_of_the_release(tmp_path):
    dest, k = tmp_path / "svc", key()
    spec = files(k)
    spec["client.env"]["content"] = base64.b64encode(b'PSA_MZP_PASSWORD="s3cr3t-pass"\n').decode()
    out = present(tmp_path, dest, "01", spec,
                  reload_command=f"cat {dest}/current/client.env >&2; exit 1")
    assert out["failed"] and "s3cr3t-pass" not in json.dumps(out) and "********" in out["msg"], out
    keyed = present(tmp_path, dest, "02", files(key()),
                    reload_command=f"cat {dest}/current/client.key; exit 1")
    assert keyed["failed"] and "PRIVATE KEY" not in json.dumps(keyed) and "withheld" in keyed["msg"], keyed


def test_what_the_module_reports_is_never_masked_by_a_mode(tmp_path):
    """Ansible masks every value of a no_log option wherever it appears in the result: with the modes inside
    `files`, a fingerprint, a serial or a release holding "0600" came back with "********" in it, and the deploy
    failed as drift ("client.key is not Vault's key") about one host in a hundred."""
    dest, k = tmp_path / "svc", key()
    serial = "0600A0644"  # a serial holding both modes: masked before the modes left the secret option
    out = present(tmp_path, dest, serial, files(k), reload_command="true")
    assert not out.get("failed"), out
    assert out["release"] == serial and out["serial"] != "" and "*" not in json.dumps(out), out
    assert out["release_id"] == f"rid-{serial}" and out["activated"]
    bad = present(tmp_path, dest, "02", {n: dict(v, mode="rw") for n, v in files(k).items()})
    assert bad["failed"] and "octal mode" in bad["msg"], bad


def tree(root):
    return sorted((str(p.relative_to(root)), p.is_symlink() and os.readlink(p)) for p in root.rglob("*"))


def test_a_host_serving_a_newer_certificate_unknown_to_vault_is_never_switched_away_from(tmp_path, service):
    """Vault restored from a backup older than the last import: what it calls current is older than what the
    host serves, and the newer key exists on the hosts only. The module leaves it alone and says so; once Vault
    knows that serial (a rollback to an older certificate), the same call switches."""
    dest, log, cmds = service
    issued = NOW - dt.timedelta(days=30)
    vaults = files(key(), not_before=issued)
    first = present(tmp_path, dest, "NEWER", files(key()), **cmds)
    assert first["switched"] and not first.get("failed"), first
    newer = first["serial"]
    before, reloads = tree(dest), log.read_text()
    refused = present(tmp_path, dest, "OLDER", vaults, not_before=issued.isoformat(), known_serials=["OLDER"], **cmds)
    assert refused.get("failed") and refused["ahead"], refused
    assert refused["msg"].startswith(f"ahead: current serves serial {newer} (issued "), refused["msg"]
    assert "newer than Vault's certificate OLDER" in refused["msg"] and "not replaced" in refused["msg"]
    assert tree(dest) == before and log.read_text() == reloads  # nothing staged, switched or reloaded
    # Vault's history holds the newer serial (an operator rolled back on purpose): replaced as asked.
    rolled = present(tmp_path, dest, "OLDER", vaults, not_before=issued.isoformat(),
                     known_serials=["OLDER", newer], **cmds)
    assert rolled["switched"] and not rolled.get("failed") and os.readlink(dest / "current") == "releases/OLDER"
    # A certificate older than Vault's is replaced without a question (the usual renewal).
    renewed = present(tmp_path, dest, "RENEWED", files(key()), not_before=NOW.isoformat(), known_serials=[], **cmds)
    assert renewed["switched"] and not renewed.get("failed"), renewed


@pytest.mark.parametrize("value", ["plain-1.2", "with space", 'q"uote', "back\\slash", "dollar$HOME", "tick`id`",
                                   "all \" \\ $ ` of them", "", "équipe", "a=b=c"])
def test_client_env_reads_back_the_same_in_sh_the_module_and_the_core(tmp_path, value):
    """What deploy.env_value writes, read back by sh (the service's view), by the module and by recover."""
    from partnercerts import deploy
    env = tmp_path / "client.env"
    env.write_text(f"PSA_P12_PASSWORD={deploy.env_value(value)}\n", encoding="utf-8")
    sh = subprocess.run(["sh", "-c", '. "$1"; printf %s "$PSA_P12_PASSWORD"', "sh", str(env)],
                        capture_output=True, text=True, check=True).stdout
    assert sh == value
    assert mod.read_env(str(env))["PSA_P12_PASSWORD"] == value
    assert deploy.read_env(env.read_text(encoding="utf-8"))["PSA_P12_PASSWORD"] == value
