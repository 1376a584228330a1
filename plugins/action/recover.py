# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Action plugin: take the release a host serves back into Vault, after Vault lost it (restored from a backup
older than its import). The release module reads the files current serves on the host (state=export); they
stay in this process's memory, pass through the core's import gate and go to Vault; none of them is in the
task's result, its arguments, or a file on the control node."""
from __future__ import annotations

import base64

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.partnercerts.psa.plugins.plugin_utils import core


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mzp", "app", "dest", "ca"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        mzp, app, dest = args.get("mzp"), args.get("app"), args.get("dest")
        if not mzp or not app or not dest:
            raise AnsibleActionFail("mzp, app and dest are required")
        if self._task.check_mode:
            result.update(changed=False, msg="check mode: nothing read from the host, nothing written to Vault")
            return result
        core.require()
        module = self._execute_module(module_name="partnercerts.psa.release",
                                      module_args={"state": "export", "dest": dest}, task_vars=task_vars)
        exported = module.pop("exported", None) or {}
        module.pop("invocation", None)
        if module.get("failed"):
            result.update(module)
            return result
        files = {name: base64.b64decode(value) for name, value in exported.items()}
        del exported
        host = (task_vars or {}).get("inventory_hostname") or "?"
        result.update(core.recover(mzp, app, host, files, args.get("ca")))
        result["release"] = module.get("release")
        return result
