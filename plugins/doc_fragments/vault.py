# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
from __future__ import annotations


class ModuleDocFragment:
    """What every plugin that reads or writes Vault through the partnercerts core needs on the controller."""

    DOCUMENTATION = r"""
options: {}
requirements:
  - the C(partnercerts) Python package on the controller, in the Python that runs ansible-playbook
    (C(pip install partnercerts); from its repository, C(pip install .)); it brings C(hvac) and C(cryptography)
notes:
  - Runs on the controller and reaches Vault or OpenBao through the partnercerts core, configured by
    the controller's environment as for C(scripts/inv) or the C(partnercerts) command, e.g. C(VAULT_ADDR),
    C(VAULT_TOKEN) or C(VAULT_ROLE_ID) and C(VAULT_SECRET_ID), C(VAULT_CACERT), C(VAULT_NAMESPACE),
    C(PARTNERCERTS_KV_MOUNT), C(PARTNERCERTS_PREFIX) and C(PARTNERCERTS_INVENTORY); with C(VAULT_ADDR) unset,
    the embedded OpenBao of C(scripts/inv vault.up).
  - Secrets are read in memory on the controller; none reaches the task's arguments, its results or a file
    on the controller.
"""

    # The credential a task is about, as the inventory's partnercerts_partners names it.
    CREDENTIAL = r"""
options:
  mzp:
    description:
      - The partner login (C(MZP) and six digits) of the credential, as in C(partnercerts_partners).
    type: str
  app:
    description:
      - The application of that partner whose key, certificate and Client ID are meant.
    type: str
"""
