# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
# The documentation of the rotate action plugin (plugins/action/rotate.py), which runs on the
# controller and has no module of its own, as ansible.builtin documents its action-only plugins.
from __future__ import annotations

DOCUMENTATION = r"""
module: rotate
short_description: One rotation run of partnercerts, in two steps (start, finish), on the controller
description:
  - Does what C(scripts/inv rotate) does, for teams that drive everything from Ansible (AWX, Semaphore),
    through the same core, the same lock in Vault and the same report.
  - I(state=start) plans every credential of the inventory's C(partnercerts_partners) (or the one named by
    O(mzp) and O(app)), takes the rotation lock in Vault and renews what is due (new key, CSR, submission
    to the authority, import of what the sandbox authority signs). It returns what to deploy; a deploy
    play (M(partnercerts.psa.release) through the C(partnercerts_deploy) role) follows.
  - I(state=finish), given the C(run) that I(state=start) returned, records the run, sends the
    notifications, writes the metrics and releases the lock; then it fails, naming them, if a credential
    failed at I(state=start) or a host failed in between. A credential that fails does not fail
    I(state=start) (a warning names it), so that the others are deployed and the run always finishes.
  - If another run holds the lock, I(state=start) changes nothing and says who holds it.
version_added: 0.1.0
author: partnercerts contributors (!UNKNOWN)  # no GitHub handle yet
extends_documentation_fragment:
  - partnercerts.psa.vault
attributes:
  check_mode:
    support: none
    description: Use O(dry_run) to see the plan without changing anything.
  diff_mode:
    support: none
    description: Nothing to show as a diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
options:
  state:
    description:
      - V(start) plans, takes the lock and renews; V(finish) records the run started by V(start) and
        releases its lock.
    type: str
    choices: [start, finish]
    default: start
  mzp:
    description:
      - With V(start), only the credentials of this partner login.
    type: str
  app:
    description:
      - With V(start), only this application (of O(mzp), or of every partner).
    type: str
  dry_run:
    description:
      - With V(start), only plan; take no lock and change nothing.
    type: bool
    default: false
  run:
    description:
      - With V(finish), the RV(run) that V(start) returned (no secrets in it).
    type: dict
  deploy_failures:
    description:
      - With V(finish), the failures of the deploy play between V(start) and V(finish), one string per failure
        naming the host, the credential and why (C(playbooks/rotate.yml) gathers the
        C(partnercerts_deploy_failures) its hosts kept). They are
        recorded and notified with the run, and V(finish) then fails naming them.
    type: list
    elements: str
    default: []
seealso:
  - module: partnercerts.psa.release
  - module: partnercerts.psa.hosts_report
"""

EXAMPLES = r"""
- name: Plan, take the rotation lock, renew, submit, import
  partnercerts.psa.rotate:
    state: start
  register: rotation

- name: Deploy what changed (the partnercerts_deploy role, for these credentials only)
  ansible.builtin.debug:
    msg: "{{ rotation.deploy }}"

- name: Record the run, notify, refresh the metrics, release the lock
  partnercerts.psa.rotate:
    state: finish
    run: "{{ rotation.run | default({}) }}"

- name: What would be renewed for one partner's fleet application (changes nothing)
  partnercerts.psa.rotate:
    mzp: MZP128745
    app: fleet
    dry_run: true
"""

RETURN = r"""
deploy:
  description: The credentials to deploy now (renewed, or behind on some host), as C(MZP/app).
  returned: with state=start
  type: list
  elements: str
  sample: [MZP128745/fleet]
plan:
  description: One line per credential, what is due and why (issue, renew, submit, wait, nothing).
  returned: with state=start, unless another run holds the lock
  type: list
  elements: str
  sample: ["MZP128745/fleet: renew (12 days left <= renew_before_days 60)"]
applied:
  description: One line per step applied.
  returned: with state=start, unless another run holds the lock
  type: list
  elements: str
replies:
  description: >-
    One line per message of the partners' reply mailboxes read before planning: what it is and what was
    done (imported, already current, left in place as unmatched or refused, and why).
  returned: with state=start, unless another run holds the lock
  type: list
  elements: str
failed_credentials:
  description: >-
    Credentials whose step failed, each C(MZP/app: why). V(start) warns about them and goes on; V(finish)
    (which returns them too) fails when it is not empty.
  returned: with state=start unless another run holds the lock, and with state=finish
  type: list
  elements: str
run:
  description: What V(finish) needs of this run (its lock token, steps and events); pass it back as O(run).
  returned: with state=start, unless another run holds the lock
  type: dict
held:
  description: The lock that another run holds (holder, since when); nothing was done.
  returned: with state=start, when another run holds the lock
  type: dict
events:
  description: The events of the run that were notified (certificate imported, deployed, deploy failed, ...).
  returned: with state=finish
  type: list
  elements: str
deploy_failures:
  description: The deploy failures O(deploy_failures) gave; V(finish) fails when it is not empty.
  returned: with state=finish
  type: list
  elements: str
notify_failures:
  description: Notifications that could not be sent (a failure to notify is never fatal).
  returned: with state=finish
  type: list
  elements: str
"""
