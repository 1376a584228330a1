# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Action plugin: record in Vault, per credential, which hosts serve its current certificate.

Run once per play (run_once) at the end of the partnercerts_deploy role's deploy and verify task
files. It reads each host's results of this run from the host variables the role keeps
(partnercerts_deploy_outcomes, partnercerts_deploy_failures) and the credentials each host uses
(partnercerts_deploy_credentials), so it works with any ansible.cfg.
"""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.partnercerts.psa.plugins.plugin_utils import core

CHECKED = ("inspect", "present", "activated")  # states whose result says what current serves
UNKNOWN_FAILURE = "unreachable, or failed before its check (see the run's output)"


def reports_of(results):
    """Per credential, this host's last report, from its tagged release results in run order.

    A result that says what current serves (in_sync) is a report; a later failure, or a
    rollback that switched, overrides an earlier "in sync" of the same run."""
    reports = {}
    for res in results or []:
        items: list = res["results"] if isinstance(res, dict) and isinstance(res.get("results"), list) else [res]
        for item in items:
            tag = item.get("partnercerts") if isinstance(item, dict) else None
            if not isinstance(tag, dict) or not tag.get("mzp"):
                continue
            key = (str(tag["mzp"]), str(tag.get("app") or ""))
            if tag.get("state") in CHECKED and "in_sync" in item:
                reports[key] = {"in_sync": bool(item["in_sync"]), "serial": item.get("serial", ""),
                                "fingerprint_sha256": item.get("fingerprint_sha256", ""),
                                "drift": list(item.get("drift", []))}
            elif item.get("failed") or (tag.get("state") == "rollback" and item.get("changed")):
                why = item.get("msg") or "rolled back to the previous release after a failure"
                reports[key] = failed_report(" ".join(to_text(why).split())[:400])
    return reports


def failed_report(why):
    return {"in_sync": False, "serial": "", "fingerprint_sha256": "", "drift": ["failed: " + why]}


def credential_names(value):
    """("MZP", "app") pairs of a list of "MZP/app" strings (partnercerts_deploy_only)."""
    parts = (to_text(x).partition("/") for x in value or [])
    return {(p[0], p[2]) for p in parts}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("hosts", "only"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        for name in ("hosts", "only"):
            if args.get(name) is not None and not isinstance(args[name], list):
                raise AnsibleActionFail("%s must be a list, not %r" % (name, args[name]))
        # Run once for the whole play: a failure here would stop every host's play, and hide why each
        # host failed; so whatever goes wrong in recording is a warning.
        try:
            core.require()
            recorded = self._record(args, task_vars or {})
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._display.warning("partnercerts: could not record host sync in Vault: %s"
                                  % (exc if isinstance(exc, AnsibleActionFail) else type(exc).__name__))
            recorded = []
        result.update(changed=False, credentials=recorded)
        return result

    def _record(self, args, task_vars):
        hostvars = task_vars["hostvars"]
        universe = args.get("hosts")
        if universe is None:  # every host the play targets, --limit or not: a limited run must not forget the others
            lookup = self._shared_loader_obj.lookup_loader.get("ansible.builtin.inventory_hostnames",
                                                               loader=self._loader, templar=self._templar)
            universe = lookup.run(self._task.get_play().hosts, variables=task_vars)
        only = credential_names(args.get("only"))

        host_creds: dict = {}
        for host in universe:
            for cred in hostvars[host].get("partnercerts_deploy_credentials") or []:
                if isinstance(cred, dict) and "mzp" in cred and "app" in cred:
                    host_creds.setdefault((to_text(cred["mzp"]), to_text(cred["app"])), set()).add(host)
        for key in only:  # asked for by name but used by no host: recorded as having none
            host_creds.setdefault(key, set())

        # This run's hosts: what each served, and why a failed one failed.
        played = task_vars.get("ansible_play_hosts_all") or []
        active = set(task_vars.get("ansible_play_hosts") or [])
        reports: dict = {}
        failures: dict = {}
        for host in played:
            hv = hostvars[host]
            for key, report in reports_of(hv.get("partnercerts_deploy_outcomes")).items():
                reports.setdefault(key, {})[host] = report
            why = [to_text(m) for m in hv.get("partnercerts_deploy_failures") or []]
            if why or host not in active:
                failures[host] = why or [UNKNOWN_FAILURE]
        # Hosts that failed before their check count as out of sync for their credentials.
        for key, hosts in host_creds.items():
            if only and key not in only:
                continue
            for host in sorted(hosts & set(failures)):
                reports.setdefault(key, {}).setdefault(host, failed_report("; ".join(failures[host])[:400]))

        keys = set(host_creds) | set(reports)
        if only:
            keys &= only | set(reports)
        recorded = []
        for mzp, app in sorted(k for k in keys if k[0] and k[1]):
            got = reports.get((mzp, app), {})
            hosts = host_creds.get((mzp, app), set())
            if not (got or not hosts):
                continue  # nothing checked: every host keeps its last report
            entry = {"mzp": mzp, "app": app, "checked": sorted(got),
                     "in_sync": sorted(h for h, r in got.items() if r["in_sync"])}
            if not self._task.check_mode:
                try:
                    entry["hosts_in_sync"], entry["hosts_total"] = core.record_hosts(mzp, app, got, hosts | set(got))
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    self._display.warning("partnercerts: could not record host sync of %s/%s in Vault: %s"
                                          % (mzp, app, exc if isinstance(exc, AnsibleActionFail)
                                             else type(exc).__name__))
                    entry["error"] = type(exc).__name__
            recorded.append(entry)
        return recorded
