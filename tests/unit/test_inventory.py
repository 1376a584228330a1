"""Partner definitions: loaded from the inventory, every mistake named by file, partner and field."""
import pytest

from partnercerts.errors import UserError
from partnercerts.inventory import load
from tests.conftest import DEMO_PARTNER

GOOD = {"mzp": "MZP111111", "country": "DE", "state": "Bayern", "locality": "München",
        "organization": "Acme, GmbH", "email": "a@acme.example", "applications": [{"name": "fleet"}]}


def write(tmp_path, text, name="partners.yml"):
    d = tmp_path / "group_vars" / "all"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding="utf-8")
    return d / name


def yaml_partner(**over):
    import yaml
    return yaml.safe_dump({"partnercerts_partners": [{**GOOD, **over}]}, allow_unicode=True)


def test_demo_partner_round_trips_exactly(tmp_path):
    write(tmp_path, DEMO_PARTNER)
    inv = load(tmp_path)
    (p,) = inv.partners
    assert p.subject.state == "Île-de-France" and p.subject.organization == "Free2Move, SAS"
    assert [(a.name, a.key_spec) for a in p.applications] == [("fleet", "rsa2048"), ("big", "rsa3072")]
    assert p.renew_before_days == 60 and p.submission.method == "sandbox" and p.pending_reminder_days == 7


def test_shipped_local_inventory_is_valid():
    from partnercerts.settings import ROOT
    inv = load(ROOT / "inventories" / "local")
    assert [p.mzp for p in inv.partners] == ["MZP123456"]
    assert len(inv.partners[0].applications) == 2


@pytest.mark.parametrize("over,match", [
    ({"mzp": "MZP12345"}, "partner MZP12345: field 'mzp'"),
    ({"mzp": None}, "partner #1: field 'mzp'"),
    ({"country": "FRA"}, "partner MZP111111: field 'country'"),
    ({"email": "not-an-address"}, "partner MZP111111: field 'email'"),
    ({"applications": [{"name": "a"}, {"name": "a"}]}, "application 'a' is listed twice"),
    ({"applications": [{"name": "a", "key": "ec256"}]}, "application a: field 'key' is 'ec256'"),
    ({"applications": [{"name": "../etc"}]}, "application name '../etc' is not allowed"),
    ({"applications": []}, "field 'applications'"),
    ({"ou": "Other"}, "unknown field"),
    ({"state": "two\nlines"}, "field 'state' contains a control character"),
    ({"organization": "x" * 65}, "field 'organization' is 65 characters"),
    ({"submission": "carrier-pigeon"}, "field 'submission'"),
    ({"submission": {"method": "outbox", "to": "x@y.example"}}, "submission 'dir' must be an absolute"),
    ({"submission": {"method": "email", "to": "nobody"}}, "submission 'to': field 'email'"),
    ({"submission": {"method": "email", "to": "a@b.example"}}, "submission 'smtp' must be a mapping"),
    ({"pending_reminder_days": -1}, "pending_reminder_days"),
    ({"renew_before_days": 0}, "renew_before_days"),
])
def test_errors_name_file_partner_and_field(tmp_path, over, match):
    f = write(tmp_path, yaml_partner(**over))
    with pytest.raises(UserError, match=match) as exc:
        load(tmp_path)
    assert str(exc.value).startswith(str(f))


def test_duplicate_partner_across_files(tmp_path):
    write(tmp_path, yaml_partner(), "a.yml")
    write(tmp_path, yaml_partner(), "b.yml")
    with pytest.raises(UserError, match="defined twice"):
        load(tmp_path)


def test_duplicate_yaml_key_and_bad_yaml(tmp_path):
    f = write(tmp_path, "partnercerts_partners:\n  - mzp: MZP111111\n    mzp: MZP222222\n")
    with pytest.raises(UserError, match=f"{f}:3: not valid YAML"):
        load(tmp_path)
    write(tmp_path, "partnercerts_partners: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(tmp_path)


def test_missing_inventory(tmp_path):
    with pytest.raises(UserError, match="PARTNERCERTS_INVENTORY"):
        load(tmp_path / "nope")


def test_shipped_example_inventory_is_valid():
    from partnercerts.settings import ROOT
    inv = load(ROOT / "inventories" / "example")
    assert [a.name for a in inv.partners[0].applications] == ["fleet", "telematics"] and not inv.sandbox_api
