"""Running the playbooks from tasks: the same plays a user runs with ansible-playbook."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..settings import Settings


def checkout(settings: Settings) -> Path:
    """The repository whose playbooks and ansible.cfg the host tasks run; an installed package has none."""
    if settings.checkout is None:
        raise UserError("deploy, verify, rollback, recover and schedule run the playbooks of a partnercerts checkout "
                        "(scripts/inv); with the installed package, run the Ansible collection's playbooks "
                        "instead, e.g. ansible-playbook -i INVENTORY partnercerts.psa.deploy")
    return settings.checkout


def ansible_env(settings: Settings) -> dict[str, str]:
    """The environment of the Ansible commands: this checkout's ansible.cfg, the settings' inventory and state."""
    return {"ANSIBLE_NOCOLOR": "1", **os.environ, "ANSIBLE_CONFIG": str(checkout(settings) / "ansible.cfg"),
            "PARTNERCERTS_INVENTORY": str(settings.inventory), "PARTNERCERTS_STATE_DIR": str(settings.state_dir)}


def inventory_has_host(settings: Settings, host: str) -> bool:
    """Whether the Ansible inventory knows `host` by that name (ansible-inventory --host)."""
    cmd = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(settings.inventory), "--host", host]
    return subprocess.run(cmd, env=ansible_env(settings), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120).returncode == 0


def playbook(name: str, settings: Settings, *, limit: str | None = None, check: bool = False, diff: bool = False,
             extra: dict | None = None, verbose: int = 0) -> int:
    """Run playbooks/<name> on the configured inventory; returns ansible-playbook's exit code."""
    from .. import inventory
    from ..sandbox.daemon import ensure_running
    root = checkout(settings)
    if inventory.load(settings.inventory).sandbox_api:
        ensure_running(settings)
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(settings.inventory),
           str(root / "playbooks" / name)]
    if limit:
        cmd += ["--limit", limit]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if extra:
        cmd += ["-e", json.dumps(extra)]
    if verbose:
        cmd.append("-" + "v" * verbose)
    sys.stdout.flush()
    return subprocess.run(cmd, env=ansible_env(settings), stdin=subprocess.DEVNULL).returncode
