"""monitoring/: the alerting rules pass promtool (its checks and every unit test, each alert with a firing
and a not-firing case), the dashboard and the rules query only metrics the toolkit writes, and the real
pipeline works: `scripts/inv rotate` writes the textfile, Debian's prometheus-node-exporter serves it, a real
prometheus scrapes it with the rules loaded, and an expiring credential raises its alerts while a healthy one
raises none. promtool, prometheus and prometheus-node-exporter come from scripts/install-system-deps; a
missing one fails the test (never skipped)."""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from types import SimpleNamespace

import pytest
import yaml

from devtools.monitoring import DevNodeExporter, DevPrometheus, promtool
from partnercerts import metrics
from partnercerts.planner import Row
from tests.conftest import ROOT
from tests.integration.test_rotation_prod import at, set_global

MON = ROOT / "monitoring"
RULES = MON / "partnercerts.rules.yml"
RULE_TESTS = MON / "partnercerts.rules.test.yml"
DASHBOARD = MON / "grafana-dashboard.json"
MZP = "MZP654321"


def run_promtool(*args: str) -> str:
    try:
        binary = promtool()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # never skipped: a machine without promtool cannot vouch for the rules
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=MON)
    assert p.returncode == 0, f"promtool {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


# -- promtool ----------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    out = run_promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_promtool_unit_tests_pass():
    assert "SUCCESS" in run_promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_firing_and_a_not_firing_case_and_says_what_to_do():
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no test where it stays quiet"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert "scripts/inv " in description, f"{name}: the description names no fix"
        for case in mine:  # the rendered annotations are checked too, not only the labels
            for exp in case.get("exp_alerts") or []:
                assert set(exp["exp_annotations"]) == {"summary", "description"}, name
                if "app" in exp["exp_labels"]:  # a per-credential alert names it first thing
                    assert "{{ $labels.mzp }}/{{ $labels.app }}" in summary, name
                    assert exp["exp_annotations"]["summary"].startswith(
                        f"{exp['exp_labels']['mzp']}/{exp['exp_labels']['app']}: "), name
                elif "mzp" in exp["exp_labels"]:
                    assert "{{ $labels.mzp }}" in summary, name


# -- metric names used by the dashboard and the rules -----------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are not functions, keywords or labels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)     # strings
    expr = re.sub(r"\$\{?\w+(?::\w+)?\}?", "", expr)                                  # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)                                            # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                           # ranges, subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w:.])[a-zA-Z_:][\w:]*", expr):
        word, rest = m.group(), expr[m.end():].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_parser():
    assert metric_names('sum by (mzp, app) (rate(a_total{x="b c"}[5m])) / on(mzp) group_left(z) b_c > 1e3') == {
        "a_total", "b_c"}
    assert metric_names('time() - x{file=~".*p.*"} > 26 * 3600 unless on(i) y offset 1d') == {"x", "y"}
    assert metric_names('sort((m{instance=~"$instance",mzp=~"$mzp"} - time()) / 86400) or vector(0)') == {"m"}


def written_names() -> set[str]:
    """Every family partnercerts.metrics.render writes, from a sample that has every one of them."""
    now = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    rows = [Row(MZP, "fleet", "C1", "pending", "01", "2027-01-01T00:00:00+00:00", 34,
                "2026-11-20T00:00:00+00:00", hosts_in_sync=1, hosts_total=2, turnaround_median_days=3.5,
                pending_stage="reminded")]
    # inventory.Partner as render reads it (tests/unit/test_metrics.py renders real ones)
    partners = [SimpleNamespace(mzp=MZP, pending_reminder_days=7, deploy_window_days=7)]
    text = metrics.render(rows, now=now, last_run=now, last_success=now,
                          replies_left={MZP: {"unmatched": 1}}, partners=partners)
    names = set(re.findall(r"^# TYPE (\S+) gauge$", text, re.M))
    assert names == {metrics.PREFIX + n for n in metrics.HELP}, "the sample must have every family"
    return names


def allowed(name: str, written: set[str]) -> bool:
    return name in written or name.startswith("node_textfile_")


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(board["panels"])
    for var in board.get("templating", {}).get("list", []):
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            out.append((f"variable {var['name']}", m.group(1) if m else q))
    return out


def test_the_dashboard_is_valid_json_with_panels_on_written_metrics_only():
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and isinstance(board["panels"], list)
    data_panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(data_panels) >= 8
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " ".join(p["title"].lower() for p in data_panels)
    for topic in ("days left", "pending age", "hosts in sync", "last run", "last success", "textfile"):
        assert topic in titles, f"no panel about {topic}"
    exprs = dashboard_exprs(board)
    assert all(expr.strip() for _, expr in exprs) and len(exprs) > len(data_panels)
    written = written_names()
    used = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        bad = {n for n in names if not allowed(n, written)}
        assert not bad, f"{where}: {sorted(bad)} are not written by the toolkit ({expr})"
        used |= names
    # Each data panel uses the dashboard's Prometheus variable.
    assert all(p["datasource"]["uid"] == "${datasource}" for p in data_panels)
    assert {"partnercerts_certificate_expiration_timestamp_seconds", "partnercerts_pending_age_seconds",
            "partnercerts_hosts_in_sync", "partnercerts_last_success_timestamp_seconds",
            "node_textfile_mtime_seconds"} <= used


def test_the_rules_use_written_metrics_only():
    written = written_names()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names and all(allowed(n, written) for n in names), (rule["alert"], names - written)


# -- the real pipeline: rotate -> textfile -> node_exporter -> prometheus -> alerts --------------------------


@pytest.fixture
def monitoring(tmp_path):
    """node_exporter serving tmp_path/textfile and prometheus scraping it every second with the rules loaded."""
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    servers = []
    try:
        exporter = DevNodeExporter(tmp_path / "node-exporter", textfile)
        servers.append(exporter)
        prom = DevPrometheus(tmp_path / "prometheus", [exporter.target], [RULES], interval="1s")
        servers.append(prom)
        yield textfile, exporter, prom
    finally:
        for server in reversed(servers):
            server.stop()
        for server in servers:
            assert server.proc is None


def firing(prom: DevPrometheus) -> set[tuple[str, str]]:
    """(alertname, mzp/app or instance) of every partnercerts alert firing now."""
    return {(a["labels"]["alertname"], f"{a['labels']['mzp']}/{a['labels']['app']}" if "app" in a["labels"]
             else a["labels"].get("instance", "")) for a in prom.alerts()
            if a["state"] == "firing" and a["labels"]["alertname"].startswith("Partnercerts")}


def test_an_expiring_credential_raises_its_alerts_and_a_healthy_one_none(cli, inventory, monitoring):
    textfile_dir, exporter, prom = monitoring
    textfile = textfile_dir / "partnercerts.prom"
    set_global(inventory, partnercerts_metrics_textfile=str(textfile))
    # Servers first: prometheus's first scrape (~5 s after start) overlaps the rotations.
    # 360 days ago the sandbox signed `big` for a year: 5 days left now, nothing pending.
    cli("rotate", "--no-deploy", "--app", "big", env=at(-360))
    # Today `fleet` is issued for a year; this run writes the textfile as of now.
    cli("rotate", "--no-deploy", "--app", "fleet")
    text = textfile.read_text()
    assert f'partnercerts_certificate_info{{mzp="{MZP}",app="big"' in text and 'state="expiring"' in text
    assert f'partnercerts_pending_stage{{mzp="{MZP}",app="fleet",stage="issued"}} 1' in text
    assert "partnercerts_turnaround_median_seconds" in text
    assert "partnercerts_pending_age_seconds" in exporter.metrics()  # node_exporter serves what was written

    expected = {("PartnercertsCertificateExpiresWithinTurnaround", f"{MZP}/big"),
                ("PartnercertsCertificateExpiringUnrenewed", f"{MZP}/big")}
    prom.wait_for(lambda: expected <= firing(prom), seconds=25, what="alerts for the expiring credential")
    assert prom.targets_up()
    scraped = {r["metric"]["app"]: float(r["value"][1]) for r in
               prom.query("(partnercerts_certificate_expiration_timestamp_seconds - time()) / 86400")}
    assert 4 < scraped["big"] < 6 and 364 < scraped["fleet"] < 366, scraped
    assert all(r["health"] == "ok" for g in prom.rules() for r in g["rules"]), prom.rules()
    # The healthy credential raises nothing, and nothing else fires: not the runs, the textfile, the hosts.
    assert firing(prom) == expected, firing(prom)
    (alert,) = [a for a in prom.alerts()
                if a["labels"]["alertname"] == "PartnercertsCertificateExpiresWithinTurnaround"]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["mzp"] == MZP
    assert alert["annotations"]["summary"].startswith(f"{MZP}/big: certificate expires in 4d 23h")
    assert f"scripts/inv rotate --mzp {MZP} --app big" in alert["annotations"]["description"]
    assert not [a for a in prom.alerts() if a["labels"].get("app") == "fleet"]

    # Renewing it clears them: the next run rewrites the textfile and the alerts resolve.
    cli("rotate", "--no-deploy", "--app", "big")
    prom.wait_for(lambda: not firing(prom), seconds=15, what="resolution after the renewal")
    assert not [a for a in prom.alerts() if a["labels"]["alertname"].startswith("Partnercerts")
                and a["state"] == "firing"]
