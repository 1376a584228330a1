# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Action plugin: reads one credential from Vault through the core package, in memory, and hands
it to the release module on the host. Secrets never enter the task's arguments, its results,
or a file on the control node."""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.partnercerts.psa.plugins.plugin_utils import core


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mzp", "app", "dest", "state", "owner", "group", "keep", "to", "api_url", "url",
                             "timeout", "expiring_days", "verify", "activate", "validate_command",
                             "reload_command"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        state = args.get("state", "present")
        mzp, app = args.pop("mzp", None), args.pop("app", None)
        api_url = args.pop("api_url", None)
        expiring_days = int(args.pop("expiring_days", 14 if state != "present" else 0))
        # activated + verify: the reload is recorded and current checked against Vault in one round trip
        verify = state == "inspect" or (state == "activated" and bool(args.pop("verify", False)))
        args.pop("verify", None)
        if state == "export":  # the module's export returns the key: only the recover action takes it, in memory
            raise AnsibleActionFail("state=export is for partnercerts.psa.recover, which takes the release into "
                                    "Vault without showing it; use that module")
        with core.user_errors():
            release = None
            if state == "present":
                if not mzp or not app:
                    raise AnsibleActionFail("mzp and app are required with state=present")
                module_args, release = core.release_from_vault(mzp, app, api_url or core.default_api_url())
                args.update(module_args)
            module = self._execute_module(module_name="partnercerts.psa.release", module_args=args,
                                          task_vars=task_vars)
            module.pop("invocation", None)
            facts = None
            if release is not None and release.withdrawn and not module.get("failed"):
                # what current holds now: inspected after the reload (activate), or nothing once removed
                removed = {"present": bool(module.get("present")), "problems": []}
                facts = module if module.get("activated") else removed
            elif (verify or module.get("activated")) and mzp and app and not module.get("failed"):
                # activate: the module switched, validated, reloaded and inspected current in this one call; a
                # drift found here fails the task after a switch, and the role's rescue switches back.
                facts = module
            elif release is not None and not module.get("failed") and not module.get("changed") \
                    and not self._task.check_mode:
                # Nothing to change: current on the host is the release of Vault's current record, every
                # file checked by the module against its manifest (content, mode, owner). What it serves is
                # then exactly what the release was built from, so its facts come from those bytes, and the
                # deploy needs no second round trip to inspect it (a switched release is still inspected
                # on the host, with openssl, after the reload; `verify` always inspects on the host).
                facts = core.served_facts(release)
                module.update(serial=facts["serial"], fingerprint_sha256=facts["fingerprint_sha256"])
            if facts is not None:
                problems = core.drift(mzp, app, facts, expiring_days)
                module["drift"] = problems
                module["in_sync"] = not problems
                if problems:
                    module["failed"] = True
                    module["msg"] = "%s/%s in %s: %s" % (mzp, app, args.get("dest"), "; ".join(problems))
        result.update(module)
        result["partnercerts"] = {"mzp": mzp, "app": app, "state": state}
        return result
