# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Action plugin: one rotation run for the rotate playbook, through the same core as `scripts/inv rotate`.

state=start plans, takes the lock in Vault and renews what is due, returning what to deploy;
state=finish (given start's result) records the run, notifies, writes metrics, releases the lock.
"""
from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.partnercerts.psa.plugins.plugin_utils import core


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("state", "mzp", "app", "dry_run", "run", "deploy_failures"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        state = args.get("state", "start")
        if state == "start":
            # The lock lives as long as ansible-playbook (this worker is forked from it and ends
            # with this task), so a lock left by a killed playbook is recognised as dead.
            out = core.rotation_start(args.get("mzp"), args.get("app"), bool(args.get("dry_run")),
                                      owner_pid=os.getppid())
            result.update(out)
            if out.get("held"):  # nothing done, and no failure: said on every callback, as `scripts/inv rotate` does
                self._display.display(out["msg"])
            # A credential that failed must not stop the others from being deployed, nor the finish step
            # from recording the run: warned here, failed by state=finish.
            for line in out.get("failed_credentials", []):
                self._display.warning("rotation failed for %s; the others go on, and the run fails at its end" % line)
        elif state == "finish":
            out, failed = core.rotation_finish(args.get("run") or {}, log=self._display.warning,
                                               deploy_failures=args.get("deploy_failures") or [])
            if out is None:
                return dict(result, changed=False, skipped=True, msg="no run to finish")
            result.update(out)
            if failed:
                result.update(failed=True, msg=failed)
        else:
            raise AnsibleActionFail("state must be start or finish, not %r" % (state,))
        return result
