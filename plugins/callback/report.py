# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Callback: at the end of a run, name every failed host and why. It only formats; the host sync
in Vault is recorded by the partnercerts_deploy role's own step (partnercerts.psa.hosts_report)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: report
type: aggregate
short_description: One line per failed or unreachable host, with the reason, at the end of the run
description:
  - At the end of a playbook run, prints to standard error one line per failed or unreachable host
    and why it failed, taken from the messages of the role's own C(fail) tasks when there are any, else from the
    messages of the tasks that failed.
  - It changes nothing and records nothing; the partnercerts_deploy role records host sync in Vault
    itself (M(partnercerts.psa.hosts_report)).
author: partnercerts contributors (!UNKNOWN)  # no GitHub handle yet
requirements:
  - enabled in C(callbacks_enabled) (this repository's C(ansible.cfg) enables it)
"""

from collections import defaultdict

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "partnercerts.psa.report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.failures = defaultdict(list)  # messages of failed tasks, rescued or not
        self.verdicts = defaultdict(list)  # the role's own "why this host failed"
        self.seen_hosts = set()

    def _record(self, result, failed):
        res = result._result
        host = result._host.get_name()
        self.seen_hosts.add(host)
        if failed and not result._task.ignore_errors:
            results = res.get("results") if isinstance(res.get("results"), list) else [res]
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
        msg = str(result._result.get("msg", "")).strip()
        self.verdicts[host].append("unreachable: " + msg.splitlines()[0][:300] if msg else "unreachable")

    def v2_playbook_on_stats(self, stats):
        # A host failed if the run says so; its reasons are the role's verdicts, else the raw failures.
        failed = sorted(h for h in self.seen_hosts if stats.failures.get(h) or stats.dark.get(h))
        if not failed:
            return
        self._display.display("partnercerts: %d host(s) failed:" % len(failed), color="red", stderr=True)
        for host in failed:
            for msg in self.verdicts.get(host) or self.failures.get(host) or ["failed"]:
                self._display.display("  %s: %s" % (host, " ".join(str(msg).split())), color="red", stderr=True)
