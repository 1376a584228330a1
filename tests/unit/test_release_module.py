"""The host side of a release (plugins/modules/release.py, partnercerts.psa.release) on a real filesystem with
real openssl."""
import base64
import datetime as dt
import importlib.util
import os

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
        mod.stage(str(releases), "01", "rid", spec_files, -1, -1)
    assert os.listdir(releases) == []


def test_stage_then_switch_then_prune_keeps_current_and_previous(tmp_path):
    dest = tmp_path / "d"
    releases = dest / "releases"
    releases.mkdir(parents=True)
    names = []
    for i in range(5):
        name = f"0{i}"
        mod.stage(str(releases), name, f"rid{i}", files(key()), -1, -1)
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
