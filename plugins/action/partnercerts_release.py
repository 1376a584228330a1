"""Action plugin: reads one credential from Vault through the core package, in memory, and hands
it to the partnercerts_release module on the host. Secrets never enter the task's arguments,
its results, or a file on the control node."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from partnercerts import certs, deploy, keys  # noqa: E402
from partnercerts.errors import Error  # noqa: E402
from partnercerts.tasks._hints import HINTS  # noqa: E402 - TODO collection hints
from partnercerts.settings import Settings  # noqa: E402
from partnercerts.store import Store  # noqa: E402
from partnercerts.vault import connect  # noqa: E402

_STORE: dict[int, Store] = {}


def store() -> Store:
    import os
    pid = os.getpid()  # one connection per worker process
    if pid not in _STORE:
        settings = Settings.from_env()
        _STORE[pid] = Store(connect(settings), settings)
    return _STORE[pid]


def served_facts(release: deploy.Release) -> dict:
    """What inspect would report of a host serving exactly this release (deploy.drift's input)."""
    leaf = certs.from_pem(release.files["client.crt"].decode())[0]
    anchors = certs.from_pem(release.files["ca.crt"].decode())
    return {"present": True, "problems": [], "serial": release.serial, "fingerprint_sha256": certs.fingerprint(leaf),
            "key_sha256": keys.spki_sha256(leaf.public_key()),  # build_release checked that the key matches it
            "ca_fingerprint_sha256": certs.fingerprint(anchors[0]) if anchors else "",
            "not_after": leaf.not_valid_after_utc.isoformat()}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mzp", "app", "dest", "state", "owner", "group", "keep", "to", "api_url", "url",
                             "timeout", "expiring_days", "verify"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        state = args.get("state", "present")
        mzp, app = args.pop("mzp", None), args.pop("app", None)
        api_url = args.pop("api_url", None) or deploy.DEFAULT_API_URL
        expiring_days = int(args.pop("expiring_days", 14 if state != "present" else 0))
        # activated + verify: the reload is recorded and current checked against Vault in one round trip
        verify = state == "inspect" or (state == "activated" and bool(args.pop("verify", False)))
        args.pop("verify", None)
        try:
            release = None
            if state == "present":
                if not mzp or not app:
                    raise AnsibleActionFail("mzp and app are required with state=present")
                release = deploy.release_from_vault(store(), mzp, app, api_url)
                args.update(serial=release.serial, release_id=release.release_id, files=release.module_files())
            module = self._execute_module(module_name="partnercerts_release", module_args=args,
                                          task_vars=task_vars)
            module.pop("invocation", None)
            facts = None
            if verify and mzp and app and not module.get("failed"):
                facts = module
            elif release is not None and not module.get("failed") and not module.get("changed") \
                    and not self._task.check_mode:
                # Nothing to change: current on the host is the release of Vault's current record, every
                # file checked by the module against its manifest (content, mode, owner). What it serves is
                # then exactly what the release was built from, so its facts come from those bytes, and the
                # deploy needs no second round trip to inspect it (a switched release is still inspected
                # on the host, with openssl, after the reload; `verify` always inspects on the host).
                facts = served_facts(release)
                module.update(serial=facts["serial"], fingerprint_sha256=facts["fingerprint_sha256"])
            if facts is not None:
                found = store().read_index(mzp, app)
                now = dt.datetime.now(dt.timezone.utc)
                problems = deploy.drift(found[0] if found else None, facts, now, expiring_days)
                module["drift"] = problems
                module["in_sync"] = not problems
                if problems:
                    module["failed"] = True
                    module["msg"] = f"{mzp}/{app} in {args.get('dest')}: " + "; ".join(problems)
        except Error as exc:
            raise AnsibleActionFail(exc.worded(HINTS)) from None
        result.update(module)
        result["partnercerts"] = {"mzp": mzp, "app": app, "state": state}
        return result
