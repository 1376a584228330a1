"""Callback: at the end of a deploy or verify run, name every failed host and why, and record
per credential which hosts serve Vault's current certificate (for `scripts/inv status`)."""
from __future__ import annotations

import datetime as dt
import sys
from collections import defaultdict
from pathlib import Path

from ansible import context
from ansible.plugins.callback import CallbackBase

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DOCUMENTATION = """
name: partnercerts_report
type: aggregate
short_description: Failed hosts with reasons, and host sync counts written to Vault
description:
  - Prints one line per failed or unreachable host at the end of the run.
  - Records, per credential, whether each host serves Vault's current certificate.
requirements:
  - enabled in callbacks_enabled (ansible.cfg of this repository)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "partnercerts_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.failures: dict[str, list[str]] = defaultdict(list)  # messages of failed tasks, rescued or not
        self.verdicts: dict[str, list[str]] = defaultdict(list)  # the role's own "why this host failed"
        self.reports: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
        self.host_creds: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.seen_hosts: set[str] = set()
        self.only: set[tuple[str, str]] = set()

    def v2_playbook_on_play_start(self, play):
        vm = play.get_variable_manager()
        inventory = getattr(vm, "_inventory", None)
        if inventory is None:
            return
        # Every host of the play, --limit or not: a limited run must not forget the others.
        for host in inventory.get_hosts(play.hosts, ignore_limits=True, ignore_restrictions=True):
            for cred in vm.get_vars(host=host, play=play).get("partnercerts_deploy_credentials") or []:
                if isinstance(cred, dict) and "mzp" in cred and "app" in cred:
                    self.host_creds[(str(cred["mzp"]), str(cred["app"]))].add(host.name)
        # Credentials asked for by name but used by no host: record that they have none.
        for name in vm.extra_vars.get("partnercerts_deploy_only") or []:
            mzp, _, app = str(name).partition("/")
            self.host_creds.setdefault((mzp, app), set())
            self.only.add((mzp, app))

    def _record(self, result, failed: bool):
        res = result._result
        host = result._host.get_name()
        self.seen_hosts.add(host)
        results = res.get("results") if isinstance(res.get("results"), list) else [res]
        for item in results:
            tag = item.get("partnercerts") if isinstance(item, dict) else None
            if not tag or not tag.get("mzp"):
                continue
            key = (tag["mzp"], tag["app"])
            # present: when it changed nothing; activated: after a reload, verified in the same call
            if tag.get("state") in ("inspect", "present", "activated") and "in_sync" in item:
                self.reports[key][host] = {
                    "in_sync": bool(item["in_sync"]), "serial": item.get("serial", ""),
                    "fingerprint_sha256": item.get("fingerprint_sha256", ""), "drift": item.get("drift", []),
                }
            elif item.get("failed") or (tag.get("state") == "rollback" and item.get("changed")):
                # A later failure or a rollback overrides an earlier "in sync" of the same run.
                why = item.get("msg") or "rolled back to the previous release after a failure"
                self.reports[key][host] = {"in_sync": False, "serial": "", "fingerprint_sha256": "",
                                           "drift": ["failed: " + " ".join(str(why).split())[:400]]}
        if failed and not result._task.ignore_errors:
            msgs = [i.get("msg") for i in results if isinstance(i, dict) and i.get("failed") and i.get("msg")]
            target = self.verdicts if result._task.action in ("fail", "ansible.builtin.fail") else self.failures
            target[host].extend(m for m in (msgs or [res.get("msg", "failed")]) if m not in target[host])

    def v2_runner_on_ok(self, result):
        self._record(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, not ignore_errors)

    def v2_runner_on_unreachable(self, result):
        host = result._host.get_name()
        self.seen_hosts.add(host)
        self.verdicts[host].append("unreachable: " + str(result._result.get("msg", "")).strip().splitlines()[0][:300]
                                   if result._result.get("msg") else "unreachable")

    def v2_playbook_on_stats(self, stats):
        # A host failed if the run says so; its reasons are the role's verdicts, else the raw failures.
        failed = {h for h in self.seen_hosts if stats.failures.get(h) or stats.dark.get(h)}
        self.failures = {h: self.verdicts.get(h) or self.failures.get(h) or ["failed"] for h in sorted(failed)}
        if self.failures:
            self._display.display("partnercerts: %d host(s) failed:" % len(self.failures), color="red", stderr=True)
            for host, msgs in self.failures.items():
                for msg in msgs:
                    self._display.display("  %s: %s" % (host, " ".join(str(msg).split())), color="red", stderr=True)
        if context.CLIARGS.get("check"):
            return
        # Hosts that failed before their check count as out of sync for their credentials.
        for key, hosts in self.host_creds.items():
            if self.only and key not in self.only:
                continue
            for host in hosts & set(self.failures):
                if host not in self.reports[key]:
                    self.reports[key][host] = {"in_sync": False, "serial": "", "fingerprint_sha256": "",
                                               "drift": ["failed: " + "; ".join(self.failures[host])[:400]]}
        if not self.host_creds:
            return
        try:
            self._write(dt.datetime.now(dt.timezone.utc))
        except Exception as exc:  # reporting must never hide the run's own outcome
            self._display.warning("partnercerts: could not record host sync in Vault: %s" % type(exc).__name__)

    def _write(self, now):
        from partnercerts.hostreports import Checked
        from partnercerts.inventory import Inventory
        from partnercerts.settings import Settings
        from partnercerts.store import Store
        from partnercerts.toolkit import Toolkit
        from partnercerts.vault import connect

        settings = Settings.from_env()
        tk = Toolkit(settings, Inventory(path=settings.inventory), Store(connect(settings), settings))
        keys = set(self.host_creds) | set(self.reports)
        if self.only:
            keys &= self.only | set(self.reports)
        for key in sorted(keys):
            reports = self.reports.get(key, {})
            hosts = self.host_creds.get(key, set())
            if reports or not hosts:
                tk.hosts.record(key[0], key[1], {h: Checked.from_result(r) for h, r in reports.items()},
                                hosts | set(reports), now)
