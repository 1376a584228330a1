# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
# The documentation of the hosts_report action plugin (plugins/action/hosts_report.py), which runs
# on the controller and has no module of its own, as ansible.builtin documents its action-only plugins.
from __future__ import annotations

DOCUMENTATION = r"""
module: hosts_report
short_description: Record in Vault, per credential, which hosts serve its current certificate
description:
  - The last step of a deploy or verify run of the C(partnercerts_deploy) role, run once per play
    (C(run_once)); it is what C(scripts/inv status) and the C(partnercerts_hosts_in_sync) metric count.
  - For every host of the play it reads the results of this run that the role keeps in the host's
    variables C(partnercerts_deploy_outcomes) (the M(partnercerts.psa.release) results, in order) and
    C(partnercerts_deploy_failures) (why the host failed), and the credentials the host uses,
    C(partnercerts_deploy_credentials).
  - Per credential, a host checked in this run is recorded with what it serves (in sync or not, serial,
    fingerprint, drift); a host that failed before its check is recorded as out of sync, with the reason;
    a host not checked keeps its last report; a host that no longer uses the credential, or is no longer
    in the inventory, is forgotten. A run limited with C(--limit) forgets no other host.
  - A credential named in O(only) that no host uses is recorded as having no hosts.
  - It never fails the run because Vault could not be written or the core is missing (a warning says so,
    and the other tasks fail with the reason), and never reports a change.
version_added: 0.1.0
author: partnercerts contributors (!UNKNOWN)  # no GitHub handle yet
extends_documentation_fragment:
  - partnercerts.psa.vault
attributes:
  check_mode:
    support: full
    description: In check mode nothing is written; RV(credentials) says what would be recorded.
  diff_mode:
    support: none
    description: Nothing to show as a diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
options:
  only:
    description:
      - Only these credentials, as C(MZP/app) (the role passes C(partnercerts_deploy_only)); empty, every
        credential of the play's hosts.
    type: list
    elements: str
    default: []
  hosts:
    description:
      - The hosts whose reports are kept (a host not in it is forgotten); default every host that the
        play targets, C(--limit) ignored.
    type: list
    elements: str
seealso:
  - module: partnercerts.psa.release
"""

EXAMPLES = r"""
# The end of the partnercerts_deploy role's task files (roles/partnercerts_deploy/tasks/report.yml):
- name: Record per credential which hosts serve Vault's current certificate
  partnercerts.psa.hosts_report:
    only: "{{ partnercerts_deploy_only }}"
  run_once: true
  when: not ansible_check_mode

- name: Record only the fleet application, for the hosts of the integration group
  partnercerts.psa.hosts_report:
    only: [MZP128745/fleet]
    hosts: "{{ groups['integration'] }}"
  run_once: true
"""

RETURN = r"""
credentials:
  description: One entry per credential recorded (or, in check mode, that would be).
  returned: always
  type: list
  elements: dict
  contains:
    mzp:
      description: The partner login.
      type: str
      sample: MZP128745
    app:
      description: The application.
      type: str
      sample: fleet
    checked:
      description: The hosts reported in this run.
      type: list
      elements: str
    in_sync:
      description: Those of them that serve Vault's current certificate.
      type: list
      elements: str
    hosts_in_sync:
      description: Hosts in sync after the record, this run's and the others' last reports.
      type: int
      returned: unless in check mode or Vault could not be written
      sample: 3
    hosts_total:
      description: Hosts that use the credential, after the record.
      type: int
      returned: unless in check mode or Vault could not be written
      sample: 3
    error:
      description: The kind of error that kept the record from Vault (a warning names it too).
      type: str
      returned: when Vault could not be written
"""
