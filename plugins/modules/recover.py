# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
# The documentation of the recover action plugin (plugins/action/recover.py), which runs on the controller
# and reads the host through partnercerts.psa.release, as ansible.builtin documents its action-only plugins.
from __future__ import annotations

DOCUMENTATION = r"""
module: recover
short_description: Take the release a host serves back into Vault, after Vault lost it
description:
  - For a Vault restored from a backup older than the last import, when the hosts serve a newer certificate
    whose key Vault no longer holds (M(partnercerts.psa.release) refuses to replace it, and C(verify) reports
    it as C(ahead)).
  - Reads what C(current) serves on the host in O(dest) (after the integrity check against its manifest),
    passes it through the import gate of the partnercerts core (the key must be the certificate's, the subject
    the partner's, the certificate valid now and newer than Vault's current, its chain verified to O(ca), else
    C(PARTNERCERTS_CA_FILE), else Vault's current CA certificate, else the host's C(ca.crt)), and makes it
    Vault's current record again, with its Client ID and PKCS#12 password from C(client.env).
  - The key and the passwords stay in the controller's memory; the task's result holds none of them.
  - C(scripts/inv recover --from-host HOST --mzp MZP --app APP) runs it on one host (playbooks/recover.yml).
version_added: 0.1.0
author: partnercerts contributors (!UNKNOWN)  # no GitHub handle yet
extends_documentation_fragment:
  - partnercerts.psa.vault
attributes:
  check_mode:
    support: full
    description: In check mode nothing is read from the host and nothing is written.
  diff_mode:
    support: none
    description: Nothing to show as a diff.
  platform:
    support: full
    platforms: posix
    description: Reads the host over its connection; writes Vault from the controller.
options:
  mzp:
    description: The partner login.
    type: str
    required: true
  app:
    description: The application.
    type: str
    required: true
  dest:
    description: The credential's directory on the host (its C(partnercerts_deploy_credentials) entry).
    type: path
    required: true
  ca:
    description: A PEM file on the controller with the CA certificate the chain must verify to.
    type: path
seealso:
  - module: partnercerts.psa.release
"""

EXAMPLES = r"""
- name: Take fleet's release on this host back into Vault
  partnercerts.psa.recover:
    mzp: MZP128745
    app: fleet
    dest: /etc/psa/fleet
"""

RETURN = r"""
serial:
  description: The serial that is Vault's current again.
  returned: success
  type: str
not_after:
  description: When it expires.
  returned: success
  type: str
client_id:
  description: Its Client ID, from the host's C(client.env).
  returned: success
  type: str
fingerprint_sha256:
  description: The certificate's SHA-256 fingerprint.
  returned: success
  type: str
release:
  description: The release directory C(current) points at on the host.
  returned: success
  type: str
"""
