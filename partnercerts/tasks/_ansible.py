"""Running the playbooks from tasks: the same plays a user runs with ansible-playbook."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..settings import ROOT, Settings


def playbook(name: str, settings: Settings, *, limit: str | None = None, check: bool = False, diff: bool = False,
             extra: dict | None = None, verbose: int = 0) -> int:
    """Run playbooks/<name> on the configured inventory; returns ansible-playbook's exit code."""
    from .. import inventory
    from .sandbox import ensure_running
    if inventory.load(settings.inventory).sandbox_api:
        ensure_running(settings)
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(settings.inventory),
           str(ROOT / "playbooks" / name)]
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
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PARTNERCERTS_INVENTORY=str(settings.inventory),
               PARTNERCERTS_STATE_DIR=str(settings.state_dir), ANSIBLE_NOCOLOR=os.environ.get("ANSIBLE_NOCOLOR", "1"))
    sys.stdout.flush()
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
