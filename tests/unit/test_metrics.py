"""Prometheus textfile metrics: the exposition format read back by a strict parser, and the atomic write."""
import datetime as dt
import os
import re
import stat

import pytest

from partnercerts import metrics
from partnercerts.errors import UserError
from partnercerts.planner import Row

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def row(mzp="MZP123456", app="fleet", **over):
    base = dict(mzp=mzp, app=app, client_id="CLIENT-1", state="active", serial="1A2B",
                not_after="2027-11-28T12:00:00+00:00", days_left=365, pending_since="",
                hosts_in_sync=2, hosts_total=2)
    base.update(over)
    return Row(**base)


def parse(text: str) -> dict:
    """A strict reader of the text exposition format as node_exporter's textfile collector accepts it.

    Returns {family: {"help": str, "type": str, "samples": {frozenset(labels.items()): float}}}; raises
    AssertionError on anything off: a sample before its HELP/TYPE, a family split in two, a timestamp,
    a bad escape, a duplicate series, a missing final newline.
    """
    assert text.endswith("\n") and not text.endswith("\n\n"), "must end with exactly one newline"
    families: dict = {}
    current = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line and line == line.strip(), f"line {n}: empty or padded: {line!r}"
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (\S+) (.+)", line)
            assert m, f"line {n}: bad comment {line!r}"
            kind, name, rest = m.groups()
            assert NAME_RE.fullmatch(name), f"line {n}: bad metric name {name!r}"
            fam = families.setdefault(name, {"help": None, "type": None, "samples": {}})
            assert not fam["samples"], f"line {n}: {kind} for {name} after its samples"
            if kind == "HELP":
                assert fam["help"] is None, f"line {n}: second HELP for {name}"
                assert "\\" not in rest.replace("\\\\", "").replace("\\n", ""), f"line {n}: bad escape in HELP"
                fam["help"] = rest
            else:
                assert fam["type"] is None, f"line {n}: second TYPE for {name}"
                assert rest == "gauge", f"line {n}: type {rest!r}"
                fam["type"] = rest
            current = name
            continue
        m = NAME_RE.match(line)
        assert m, f"line {n}: no metric name: {line!r}"
        name, pos = m.group(), m.end()
        assert name == current, f"line {n}: sample of {name} outside its family block (current {current})"
        fam = families[name]
        assert fam["help"] and fam["type"], f"line {n}: sample of {name} before its HELP and TYPE"
        labels: dict = {}
        if line[pos] == "{":
            pos += 1
            while line[pos] != "}":
                lm = LABEL_RE.match(line, pos)
                assert lm, f"line {n}: bad label name at {pos}: {line!r}"
                key = lm.group()
                pos = lm.end()
                assert line[pos:pos + 2] == '="', f"line {n}: expected =\" after {key}"
                pos += 2
                value = []
                while line[pos] != '"':
                    if line[pos] == "\\":
                        assert line[pos + 1] in ESCAPES, f"line {n}: bad escape \\{line[pos + 1]}"
                        value.append(ESCAPES[line[pos + 1]])
                        pos += 2
                    else:
                        value.append(line[pos])
                        pos += 1
                pos += 1
                assert key not in labels, f"line {n}: label {key} twice"
                labels[key] = "".join(value)
                if line[pos] == ",":
                    pos += 1
                else:
                    assert line[pos] == "}", f"line {n}: expected , or }} at {pos}"
            pos += 1
        rest = line[pos:]
        assert rest.startswith(" ") and len(rest.split(" ")) == 2, f"line {n}: want exactly one value, no timestamp"
        value = float(rest[1:])
        series = frozenset(labels.items())
        assert series not in fam["samples"], f"line {n}: duplicate series"
        fam["samples"][series] = value
    for name, fam in families.items():
        assert fam["samples"], f"{name}: HELP/TYPE without samples"
    return families


def samples(families, name):
    return {tuple(sorted(k)): v for k, v in families["partnercerts_" + name]["samples"].items()}


def ident(mzp, app):
    return (("app", app), ("mzp", mzp))


def test_every_family_per_credential_and_for_the_run():
    rows = [row(), row(app="telematics", state="pending", pending_since="2026-11-25T12:00:00+00:00",
                       hosts_in_sync=1, hosts_total=3)]
    text = metrics.render(rows, now=NOW, last_run=NOW, last_success=NOW - dt.timedelta(days=1))
    fams = parse(text)
    assert all(f["type"] == "gauge" and f["help"] for f in fams.values())
    exp = dt.datetime(2027, 11, 28, 12, tzinfo=dt.timezone.utc).timestamp()
    assert samples(fams, "certificate_expiration_timestamp_seconds") == {
        ident("MZP123456", "fleet"): exp, ident("MZP123456", "telematics"): exp}
    assert samples(fams, "pending_age_seconds") == {
        ident("MZP123456", "fleet"): 0, ident("MZP123456", "telematics"): 3 * 86400}
    assert samples(fams, "hosts_in_sync") == {ident("MZP123456", "fleet"): 2, ident("MZP123456", "telematics"): 1}
    assert samples(fams, "hosts_total") == {ident("MZP123456", "fleet"): 2, ident("MZP123456", "telematics"): 3}
    info = samples(fams, "certificate_info")
    assert info == {
        (("app", "fleet"), ("client_id", "CLIENT-1"), ("mzp", "MZP123456"), ("serial", "1A2B"), ("state", "active")): 1,
        (("app", "telematics"), ("client_id", "CLIENT-1"), ("mzp", "MZP123456"), ("serial", "1A2B"),
         ("state", "pending")): 1}
    assert samples(fams, "last_run_timestamp_seconds") == {(): NOW.timestamp()}
    assert samples(fams, "last_success_timestamp_seconds") == {(): NOW.timestamp() - 86400}
    # Integers, as the collector and humans read them best.
    assert "partnercerts_last_run_timestamp_seconds 1795867200\n" in text


def test_unknowns_are_omitted_not_zeroed():
    rows = [row(client_id="", state="none", serial="", not_after="", days_left=None,
                pending_since="2026-11-28T11:00:00+00:00", hosts_in_sync=None, hosts_total=None)]
    fams = parse(metrics.render(rows, now=NOW, last_run=NOW, last_success=None))
    assert "partnercerts_certificate_expiration_timestamp_seconds" not in fams
    assert "partnercerts_hosts_in_sync" not in fams and "partnercerts_hosts_total" not in fams
    assert "partnercerts_last_success_timestamp_seconds" not in fams
    assert samples(fams, "pending_age_seconds") == {ident("MZP123456", "fleet"): 3600}
    assert list(samples(fams, "certificate_info").values()) == [1]
    assert dict(next(iter(samples(fams, "certificate_info"))))["serial"] == ""


def test_nothing_at_all_renders_nothing():
    assert metrics.render([], now=NOW, last_run=None, last_success=None) == ""
    fams = parse(metrics.render([], now=NOW, last_run=NOW, last_success=None))
    assert list(fams) == ["partnercerts_last_run_timestamp_seconds"]


def test_label_values_are_escaped():
    nasty = 'a"b\\c\nd'
    rows = [row(mzp=nasty, app="x\\", client_id='"', serial="\\n", state="line\nbreak")]
    text = metrics.render(rows, now=NOW, last_run=None, last_success=None)
    assert '{mzp="a\\"b\\\\c\\nd",app="x\\\\"}' in text
    fams = parse(text)
    (labels,) = samples(fams, "certificate_info")
    assert dict(labels) == {"mzp": nasty, "app": "x\\", "client_id": '"', "serial": "\\n", "state": "line\nbreak"}
    assert dict(next(iter(samples(fams, "pending_age_seconds")))) == {"mzp": nasty, "app": "x\\"}


def test_naive_times_are_utc_and_a_future_pending_since_is_not_negative():
    rows = [row(not_after="2027-01-01T00:00:00", pending_since="2026-11-29T00:00:00+00:00")]
    fams = parse(metrics.render(rows, now=NOW, last_run=None, last_success=None))
    assert samples(fams, "certificate_expiration_timestamp_seconds") == {
        ident("MZP123456", "fleet"): dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp()}
    assert samples(fams, "pending_age_seconds") == {ident("MZP123456", "fleet"): 0}


def test_a_duplicate_credential_does_not_make_a_duplicate_series():
    fams = parse(metrics.render([row(), row(serial="OTHER")], now=NOW, last_run=None, last_success=None))
    assert [dict(k)["serial"] for k in samples(fams, "certificate_info")] == ["1A2B"]


@pytest.mark.parametrize("bad", [
    '# HELP m h\n# TYPE m gauge\nm{a="x"} 1 1700000000\n',  # timestamp
    '# HELP m h\n# TYPE m gauge\nm{a="\\t"} 1\n',  # bad escape
    'm 1\n',                              # no HELP/TYPE
    '# HELP m h\n# TYPE m gauge\nm 1\n# HELP n h\n# TYPE n gauge\nn 1\nm 2\n',  # family split
    '# HELP m h\n# TYPE m gauge\nm{a="1"} 1\nm{a="1"} 2\n',  # duplicate series
    '# HELP m h\n# TYPE m gauge\nm 1',   # no final newline
])
def test_the_parser_is_strict(bad):
    with pytest.raises((AssertionError, ValueError, IndexError)):
        parse(bad)


def test_a_run_that_could_not_read_vault_marks_only_its_run_time():
    before = metrics.render([row()], now=NOW, last_run=NOW, last_success=NOW)
    later = NOW + dt.timedelta(days=1)
    fams = parse(metrics.mark_run(before, later))
    assert samples(fams, "last_run_timestamp_seconds") == {(): later.timestamp()}
    assert samples(fams, "last_success_timestamp_seconds") == {(): NOW.timestamp()}  # so the run shows as failed
    kept = {k: v for k, v in parse(before).items() if k != "partnercerts_last_run_timestamp_seconds"}
    assert {k: v for k, v in fams.items() if k in kept} == kept
    # No textfile yet: the run time alone (the failed-run alert has its `unless` branch for it).
    alone = {"help": metrics.HELP["last_run_timestamp_seconds"], "type": "gauge",
             "samples": {frozenset(): later.timestamp()}}
    assert parse(metrics.mark_run("", later)) == {"partnercerts_last_run_timestamp_seconds": alone}


# -- write_textfile ---------------------------------------------------------------------


def test_write_textfile_creates_only_that_file_with_mode_0644(tmp_path):
    old = os.umask(0o077)
    try:
        target = tmp_path / "partnercerts.prom"
        text = metrics.render([row()], now=NOW, last_run=NOW, last_success=NOW)
        metrics.write_textfile(target, text)
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["partnercerts.prom"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == text


def test_write_textfile_replaces_by_rename(tmp_path, monkeypatch):
    """Readers see the old file or the new one, never a half-written one: the new content is complete,
    fsynced and 0644 in a hidden non-.prom file of the same directory before one rename."""
    target = tmp_path / "partnercerts.prom"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    old_inode = target.stat().st_ino
    reader = open(target)  # noqa: SIM115 - held open across the replace
    fsynced, renames = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        fsynced.append(fd)
        real_fsync(fd)

    def replace(src, dst):
        src, dst = os.fspath(src), os.fspath(dst)
        assert os.path.dirname(src) == str(tmp_path) and dst == str(target)
        name = os.path.basename(src)
        assert name.startswith(".") and not name.endswith(".prom")
        with open(src) as fh:
            assert fh.read() == "new 1\n" and stat.S_IMODE(os.stat(src).st_mode) == 0o644
        assert fsynced, "rename before fsync"
        assert target.read_text() == "old\n"
        renames.append(name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    metrics.write_textfile(str(target), "new 1")  # the final newline is added
    assert len(renames) == 1
    assert target.read_text() == "new 1\n" and target.stat().st_ino != old_inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert reader.read() == "old\n"  # an open reader keeps the complete old file
    reader.close()
    assert os.listdir(tmp_path) == ["partnercerts.prom"]


def test_write_textfile_fails_cleanly(tmp_path):
    with pytest.raises(UserError, match="metrics textfile .*cannot write") as exc:
        metrics.write_textfile(tmp_path / "missing" / "partnercerts.prom", "x 1\n")
    assert "\n" not in str(exc.value)
    assert os.listdir(tmp_path) == []  # not even the directory
    (tmp_path / "partnercerts.prom").mkdir()  # a directory where the file should be
    with pytest.raises(UserError, match="cannot write it"):
        metrics.write_textfile(tmp_path / "partnercerts.prom", "x 1\n")
    assert os.listdir(tmp_path) == ["partnercerts.prom"]  # no temporary file left behind


# -- the families the alerting rules (monitoring/) need ---------------------------------------------------


def test_the_pending_stage_is_a_state_set_of_the_lifecycle_stages():
    from partnercerts.lifecycle import Stage
    assert metrics.STAGES == tuple(s.value for s in Stage)
    rows = [row(app="fleet", pending_stage="issued"),
            row(app="big", state="needs_attention", pending_since="2026-11-20T12:00:00+00:00",
                pending_stage="needs_attention"),
            row(app="new", pending_stage=""),              # neither CSR nor certificate: no stage
            row(app="odd", pending_stage="later_stage")]   # a stage this module does not know yet: kept
    fams = parse(metrics.render(rows, now=NOW, last_run=None, last_success=None))
    stages = samples(fams, "pending_stage")
    for app, current in (("fleet", "issued"), ("big", "needs_attention")):
        mine = {dict(k)["stage"]: v for k, v in stages.items() if dict(k)["app"] == app}
        assert mine == {s: float(s == current) for s in metrics.STAGES}, app
    assert not any(dict(k)["app"] == "new" for k in stages)
    odd = {dict(k)["stage"]: v for k, v in stages.items() if dict(k)["app"] == "odd"}
    assert odd == {**{s: 0.0 for s in metrics.STAGES}, "later_stage": 1.0}
    assert all(set(dict(k)) == {"mzp", "app", "stage"} for k in stages)


def test_the_median_turnaround_in_seconds_when_known():
    rows = [row(app="fleet", turnaround_median_days=3.5), row(app="big", turnaround_median_days=0.0),
            row(app="new", turnaround_median_days=None)]
    fams = parse(metrics.render(rows, now=NOW, last_run=None, last_success=None))
    assert samples(fams, "turnaround_median_seconds") == {
        ident("MZP123456", "fleet"): 3.5 * 86400, ident("MZP123456", "big"): 0}


def test_partner_thresholds_from_the_inventory(tmp_path):
    from partnercerts.inventory import load
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "hosts.yml").write_text("all:\n  hosts: {}\n")
    partner = ("  - mzp: {mzp}\n    country: FR\n    state: Paris\n    locality: Paris\n    organization: Ex\n"
               "    email: pki@example.com\n    submission: sandbox\n{extra}    applications:\n      - name: fleet\n")
    (tmp_path / "group_vars" / "all" / "partners.yml").write_text(
        "partnercerts_partners:\n"
        + partner.format(mzp="MZP111111", extra="    pending_reminder_days: 3\n    deploy_window_days: 10\n")
        + partner.format(mzp="MZP222222", extra=""))
    partners = load(tmp_path).partners
    text = metrics.render([row(mzp="MZP111111")], now=NOW, last_run=None, last_success=None,
                          partners=[*partners, partners[0]])  # a partner twice: one series
    fams = parse(text)
    assert samples(fams, "pending_reminder_seconds") == {
        (("mzp", "MZP111111"),): 3 * 86400, (("mzp", "MZP222222"),): 7 * 86400}
    assert samples(fams, "deploy_window_seconds") == {
        (("mzp", "MZP111111"),): 10 * 86400, (("mzp", "MZP222222"),): 7 * 86400}
    without = parse(metrics.render([row()], now=NOW, last_run=None, last_success=None))
    assert "partnercerts_pending_reminder_seconds" not in without
    assert "partnercerts_deploy_window_seconds" not in without


def test_the_existing_families_come_first_and_unchanged():
    """Adding families changed nothing of the old ones: same names, same order, same lines."""
    rows = [row(pending_stage="issued", turnaround_median_days=1.0)]
    text = metrics.render(rows, now=NOW, last_run=NOW, last_success=NOW, replies_left={"MZP123456": {"refused": 1}})
    order = re.findall(r"^# TYPE (\S+) gauge$", text, re.M)
    assert order == ["partnercerts_" + n for n in (
        "certificate_expiration_timestamp_seconds", "pending_age_seconds", "hosts_in_sync", "hosts_total",
        "certificate_info", "last_run_timestamp_seconds", "last_success_timestamp_seconds", "replies_left",
        "pending_stage", "turnaround_median_seconds")]
    assert 'partnercerts_hosts_in_sync{mzp="MZP123456",app="fleet"} 2\n' in text
    assert 'partnercerts_replies_left{mzp="MZP123456",reason="refused"} 1\n' in text
