#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) partnercerts contributors
# MIT License (see LICENSE)
"""Host side of a partnercerts release: stage, check, switch atomically, roll back, inspect."""
from __future__ import annotations

DOCUMENTATION = r"""
module: release
short_description: Numbered credential releases on a host, with one atomically switched C(current) symlink
description:
  - Lays out C(<dest>/releases/<name>/) with C(client.crt), C(client.key), C(ca.crt), C(client.p12) and
    C(client.env), checks on the host that key and certificate match and that the certificate is valid,
    then points C(<dest>/current) at it with a single rename of a symlink. A host already serving the
    release changes nothing.
  - Runs through the action plugin of the same name, which reads the credential from Vault on the
    controller (through the partnercerts core) and compares what the host serves with Vault; secrets
    never appear in the task's arguments or results.
  - The C(partnercerts_deploy) role of this collection drives it. With O(activate), one call per host and
    credential stages, checks, switches, validates, reloads and inspects, and switches back on a failure;
    then comes a smoke call.
version_added: 0.1.0
author: partnercerts contributors (!UNKNOWN)  # no GitHub handle yet
extends_documentation_fragment:
  - partnercerts.psa.vault
  - partnercerts.psa.vault.credential
attributes:
  check_mode:
    support: full
    description: With V(present), says which release would become current, and changes nothing.
  diff_mode:
    support: full
    description: The release C(current) points at, before and after.
  platform:
    support: full
    platforms: posix
    description: The module runs on the host; its action plugin reads Vault on the controller.
options:
  dest:
    description:
      - Credential directory on the host; an absolute, normalised path without C(..) components
        (C(/etc/psa/fleet), never C(../psa), C(psa/fleet), C(/etc/psa/../x) or C(/etc/psa/)).
    type: path
    required: true
  state:
    description:
      - V(present) reads Vault's current record of O(mzp)/O(app), stages it and switches C(current) to it;
        unchanged, it compares what the host serves with Vault (as V(inspect) does, without a second call).
      - V(rollback) points C(current) back at the release O(to).
      - V(inspect) reports what C(current) holds and compares it with Vault (read-only); drift fails the task.
      - V(smoke) calls the API at O(url) with the deployed credential (mutual TLS, C(client_id), Basic auth).
      - V(withdrawn) removes C(current) and deletes every release of the certificate O(serial) (its key may be
        exposed); the role then reloads the service, which has no credential until the next release. The action
        plugin chooses it by itself with V(present) when Vault marks the current certificate withdrawn
        (C(partnercerts rekey --withdraw)).
      - V(activated) records that the service was reloaded on C(current) (clears the reload-pending mark a
        switch leaves, so a deploy interrupted between its switch and its reload reloads on the next run),
        then reports what C(current) holds, as V(inspect) does; with O(verify), compared with Vault.
      - V(export) is used by M(partnercerts.psa.recover) only (the files it returns are secret), and refused
        here.
    type: str
    choices: [present, rollback, inspect, smoke, activated, withdrawn, export]
    default: present
  api_url:
    description:
      - The C(PSA_API_URL) written into C(client.env), with V(present).
      - Default C(https://api-cert.groupe-psa.com/connectedcar/v3).
    type: str
  expiring_days:
    description:
      - When what the host serves is compared with Vault, a certificate with fewer days left than this
        counts as drift (C(expiring)).
      - Default V(14), or V(0) with O(state=present).
    type: int
  verify:
    description:
      - With O(state=activated), also compare what C(current) serves with Vault, in the same call.
    type: bool
    default: false
  activate:
    description:
      - With O(state=present) (and the V(withdrawn) it may become), once C(current) was switched (or a switch
        left the service un-reloaded), the same call finishes the deploy; it runs O(validate_command) (not for
        a withdrawn certificate), runs O(reload_command), records the reload (as O(state=activated) does) and
        inspects what C(current) now serves, which the action plugin compares with Vault.
      - When O(validate_command), O(reload_command) or the inspection fails, the module switches C(current)
        back to the previous release, runs O(reload_command) again, records the reload on that release when it
        succeeded, and fails saying what failed and C((switched back to <release>)), or
        C((current left as it was)) when nothing was switched.
      - Without it (a service reloaded through the service manager), the role validates, reloads and records
        the reload in tasks of its own.
    type: bool
    default: false
  validate_command:
    description:
      - Shell command run on the host with O(activate) after the switch and before the reload; a non-zero exit
        switches back. Run as the task's shell would run it (C(/bin/sh -c), or C(ansible_shell_executable)).
      - Its output is not returned; a failure quotes its last line of output, without any secret of the release.
    type: str
  reload_command:
    description:
      - Shell command run on the host with O(activate) after the validation, which makes the service read
        C(current) again; run again after switching back on a failure. Run and quoted as O(validate_command).
    type: str
  owner:
    description: Owner of the files and directories; default the connecting user.
    type: str
  group:
    description: Group of the files and directories; default the connecting user's.
    type: str
  keep:
    description: Releases to keep on the host (C(current) and the previous one always stay).
    type: int
    default: 3
  to:
    description: Release directory name to make current with O(state=rollback); empty removes C(current).
    type: str
  url:
    description: The API URL to call with O(state=smoke); C(client_id) is added to its query.
    type: str
  timeout:
    description: Seconds to wait for the API with O(state=smoke).
    type: int
    default: 10
  release_id:
    description:
      - Set by the action plugin with O(state=present) (a hash of the release's sources); do not set it.
    type: str
  serial:
    description:
      - Set by the action plugin with O(state=present) (the certificate serial; names the release directory),
        and with O(state=withdrawn) (the serial whose releases are deleted); do not set it.
    type: str
  files:
    description:
      - Set by the action plugin with O(state=present) (file name to base64 content); secret, never logged;
        do not set it.
    type: dict
  modes:
    description:
      - Set by the action plugin with O(state=present) (file name to octal mode, for every file of O(files));
        do not set it. Apart from O(files) because Ansible masks every value of a C(no_log) option wherever it
        appears in the result, and a mode such as C(0600) would then be masked inside a fingerprint.
    type: dict
  not_before:
    description:
      - Set by the action plugin with O(state=present) (when Vault's certificate was issued, ISO 8601); do not
        set it. With O(known_serials), a host whose current certificate is still valid, newer and unknown to
        Vault is never switched away from (its key would be lost); the task fails and says so.
    type: str
  known_serials:
    description:
      - Set by the action plugin with O(state=present) (every serial Vault holds for the credential); do not
        set it.
    type: list
    elements: str
notes:
  - O(mzp) and O(app) are required with O(state=present), and to compare with Vault (O(state=inspect),
    O(state=activated) with O(verify), and an unchanged O(state=present)).
  - The host needs C(openssl) (the checks before switching use it) and a Python for the module.
seealso:
  - module: partnercerts.psa.hosts_report
  - module: partnercerts.psa.rotate
"""

EXAMPLES = r"""
- name: Deploy MZP128745/fleet, validate and reload the service, verify; switch back on a failure (one round)
  partnercerts.psa.release:
    mzp: MZP128745
    app: fleet
    dest: /etc/psa/fleet
    owner: fleetsvc
    group: fleetsvc
    activate: true
    validate_command: /usr/local/bin/fleet-service --check-config
    reload_command: systemctl kill -s HUP fleet-service

- name: Deploy Vault's current certificate of MZP128745/fleet to /etc/psa/fleet
  partnercerts.psa.release:
    mzp: MZP128745
    app: fleet
    dest: /etc/psa/fleet
    owner: fleetsvc
    group: fleetsvc
  register: fleet_release

- name: Reload the service that reads /etc/psa/fleet/current
  ansible.builtin.service:
    name: fleet-service
    state: reloaded
  when: fleet_release is changed

- name: Record the reload, and check that current serves Vault's certificate and key
  partnercerts.psa.release:
    state: activated
    verify: true
    mzp: MZP128745
    app: fleet
    dest: /etc/psa/fleet
  when: fleet_release is changed

- name: Call the API with all three credentials
  partnercerts.psa.release:
    state: smoke
    dest: /etc/psa/fleet
    url: https://api-cert.groupe-psa.com/connectedcar/v3/fleets

- name: Compare what the host serves with Vault (fails on drift; changes nothing)
  partnercerts.psa.release:
    state: inspect
    mzp: MZP128745
    app: fleet
    dest: /etc/psa/fleet
    expiring_days: 30

- name: Switch current back to the previous release
  partnercerts.psa.release:
    state: rollback
    dest: /etc/psa/fleet
    to: "{{ fleet_release.previous }}"
  when: fleet_release.previous
"""

RETURN = r"""
release:
  description: The release directory (under C(<dest>/releases/)) that C(current) points at, after the task.
  returned: with present, rollback, inspect and activated
  type: str
  sample: 4F2A9C01D3
previous:
  description: The release C(current) pointed at before the task.
  returned: with present, and rollback when it switched
  type: str
  sample: 3E11B0A7C2
switched:
  description: Whether C(current) was switched to another release.
  returned: with present
  type: bool
staged:
  description: Whether a new release directory was written (a kept release is switched to again without).
  returned: with present
  type: bool
removed:
  description: Old releases removed beyond O(keep); with O(state=withdrawn), the releases of the withdrawn serial.
  returned: with present and withdrawn
  type: list
  elements: str
withdrawn:
  description: The credential's current certificate is withdrawn in Vault, so C(current) was removed from the host.
  returned: with withdrawn (also chosen by the action plugin for present)
  type: bool
activated:
  description:
    - With O(activate), whether this call validated, reloaded and inspected the release it switched to (or whose
      reload was pending); the inspection's facts (C(present), C(problems), C(serial), ...) are then returned too.
  returned: with present and withdrawn, when O(activate) and something changed
  type: bool
rolled_back:
  description:
    - With O(activate), after a failed validation, reload or inspection, whether C(current) was switched back to
      the previous release (C(release)) in this call; the task fails.
  returned: when that failure happened
  type: bool
present:
  description: Whether C(current) points at a release with a manifest.
  returned: with inspect and activated
  type: bool
problems:
  description: What is wrong with what C(current) holds, one line each (changed files, key not matching, ...).
  returned: with inspect and activated (and present with O(activate))
  type: list
  elements: str
release_id:
  description: Identity of the content C(current) holds (a hash of its sources).
  returned: with inspect and activated, when current has a manifest
  type: str
serial:
  description: Serial of the certificate C(current) serves.
  returned: with inspect and activated; with present when nothing changed
  type: str
  sample: 4F2A9C01D3
fingerprint_sha256:
  description: SHA-256 fingerprint of that certificate (hex, lower case).
  returned: with inspect and activated; with present when nothing changed
  type: str
key_sha256:
  description: SHA-256 of the public key of C(client.key).
  returned: with inspect and activated
  type: str
key_matches:
  description: Whether C(client.key) is the key of C(client.crt).
  returned: with inspect and activated
  type: bool
ca_fingerprint_sha256:
  description: SHA-256 fingerprint of the first certificate of C(ca.crt).
  returned: with inspect and activated
  type: str
not_before:
  description: Start of the certificate's validity (ISO 8601).
  returned: with inspect and activated
  type: str
not_after:
  description: End of the certificate's validity (ISO 8601).
  returned: with inspect and activated
  type: str
  sample: "2026-12-01T21:16:11+00:00"
in_sync:
  description: Whether the host serves Vault's current certificate, key and CA, valid for O(expiring_days) more.
  returned: when what the host serves was compared with Vault
  type: bool
drift:
  description: Why it is not in sync, one line each (C(missing), C(stale), C(mismatched), C(expiring), ...).
  returned: when what the host serves was compared with Vault
  type: list
  elements: str
  sample: ["stale: serves serial 3E11B0A7C2, Vault's current is 4F2A9C01D3"]
status:
  description: HTTP status of the API call.
  returned: with smoke, when it answered 2xx
  type: int
  sample: 200
url:
  description: The URL called, without the C(client_id).
  returned: with smoke
  type: str
partnercerts:
  description: The credential and state of the task (C(mzp), C(app), C(state)), for the role's record of the run.
  returned: always
  type: dict
  sample: {mzp: MZP128745, app: fleet, state: present}
"""

import base64
import datetime
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils import urls
from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".manifest.json"
# Written (naming the release) just before current is switched, removed once the service was reloaded
# on it: a deploy that dies in between leaves it, and the next deploy reloads instead of "no change".
RELOAD_PENDING = ".reload-pending"
NAMES = ("client.crt", "client.key", "ca.crt", "client.p12", "client.env")
OCTAL = re.compile(r"^0?[0-7]{3,4}$")
WITHDRAWN_MARK = "-withdrawn"  # the reload-pending mark of a withdrawal (never a release name: SAFE_NAME)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Refused(Exception):
    """A check failed; the message says what, never a secret."""


def check_dest(dest):
    """Why dest is refused (one line, naming it and the fix), or None: it must be absolute and normalised,
    so a release can never land outside the directory the inventory names, nor depend on the login's cwd."""
    fix = "give an absolute, normalised directory such as /etc/psa/fleet in partnercerts_deploy_credentials"
    if not dest:
        return "dest is empty; %s" % fix
    if any(ord(c) < 32 or ord(c) == 127 for c in dest):
        return "dest %r contains a control character; %s" % (dest, fix)
    if not os.path.isabs(dest):
        return "dest %r is a relative path; %s" % (dest, fix)
    if ".." in dest.split("/"):
        return "dest %r contains '..'; %s" % (dest, fix)
    if os.path.normpath(dest) != dest or dest.startswith("//"):
        return "dest %r is not normalised (%s); %s" % (dest, os.path.normpath(dest), fix)
    if dest == "/":
        return "dest '/' is the root directory; %s" % fix
    return None


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ids(owner, group):
    uid = pwd.getpwnam(owner).pw_uid if owner else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def ensure_dir(path, uid, gid, mode=0o750):
    if not os.path.isdir(path):
        os.makedirs(path, mode)
    os.chmod(path, mode)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)


def read_manifest(release_dir):
    try:
        with open(os.path.join(release_dir, MANIFEST)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def current_target(dest):
    link = os.path.join(dest, "current")
    if os.path.islink(link):
        target = os.readlink(link)
        return os.path.basename(target.rstrip("/"))
    if os.path.exists(link):
        raise Refused("%s exists and is not a symlink; move it away so releases can be switched" % link)
    return None


def integrity(release_dir, manifest, uid, gid, modes):
    """Problems with a release on disk compared with its own manifest (and wanted owner/modes)."""
    problems = []
    for name, digest in sorted(manifest.get("files", {}).items()):
        path = os.path.join(release_dir, name)
        try:
            st = os.lstat(path)
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            problems.append("%s is missing" % name)
            continue
        if sha256(data) != digest:
            problems.append("%s was changed since it was deployed" % name)
        if modes and name in modes and (st.st_mode & 0o7777) != modes[name]:
            problems.append("%s has mode %o, not %o" % (name, st.st_mode & 0o7777, modes[name]))
        if uid != -1 and st.st_uid != uid:
            problems.append("%s is not owned by the wanted user" % name)
        if gid != -1 and st.st_gid != gid:
            problems.append("%s is not in the wanted group" % name)
    return problems


def openssl(args, data=None):
    try:
        p = subprocess.run(["openssl"] + args, input=data, capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        raise Refused("openssl is not installed on this host; install it "
                      "(the checks before switching need it)") from None
    return p


def pem_blocks(data, label):
    text = data.decode("ascii", "replace")
    out = []
    begin, end = "-----BEGIN %s-----" % label, "-----END %s-----" % label
    while begin in text:
        start = text.index(begin) + len(begin)
        stop = text.index(end, start)
        out.append(base64.b64decode("".join(text[start:stop].split())))
        text = text[stop + len(end):]
    return out


def cert_facts(cert_path, key_path):
    """Fingerprint and dates of the first certificate, and whether the key matches it."""
    with open(cert_path, "rb") as fh:
        pem = fh.read()
    ders = pem_blocks(pem, "CERTIFICATE")
    if not ders:
        raise Refused("client.crt holds no PEM certificate")
    facts = {"fingerprint_sha256": sha256(ders[0])}
    p = openssl(["x509", "-noout", "-serial", "-startdate", "-enddate"], pem)
    if p.returncode != 0:
        raise Refused("client.crt is not a readable certificate")
    fields = dict(line.split("=", 1) for line in p.stdout.decode().splitlines() if "=" in line)
    fmt = "%b %d %H:%M:%S %Y GMT"
    facts["serial"] = fields.get("serial", "")
    nb = datetime.datetime.strptime(" ".join(fields["notBefore"].split()), fmt)
    na = datetime.datetime.strptime(" ".join(fields["notAfter"].split()), fmt)
    facts["not_before"] = nb.replace(tzinfo=datetime.timezone.utc).isoformat()
    facts["not_after"] = na.replace(tzinfo=datetime.timezone.utc).isoformat()
    cert_pub = openssl(["x509", "-noout", "-pubkey"], pem).stdout
    key_pub = openssl(["pkey", "-pubout", "-in", key_path]).stdout
    facts["key_matches"] = bool(cert_pub) and cert_pub == key_pub
    facts["key_sha256"] = sha256(b"".join(pem_blocks(key_pub, "PUBLIC KEY"))) if key_pub else ""
    return facts


def check_release(release_dir, now):
    facts = cert_facts(os.path.join(release_dir, "client.crt"), os.path.join(release_dir, "client.key"))
    if not facts["key_matches"]:
        raise Refused("client.key does not match client.crt; refusing to switch")
    nb = datetime.datetime.fromisoformat(facts["not_before"])
    na = datetime.datetime.fromisoformat(facts["not_after"])
    if not nb <= now < na:
        raise Refused("the certificate is not valid now (%s to %s); refusing to switch" % (nb, na))
    return facts


def find_release(releases, serial, release_id, uid, gid, modes):
    """An intact release directory already holding this content, if any."""
    if not os.path.isdir(releases):
        return None
    for name in sorted(os.listdir(releases)):
        if name != serial and not name.startswith(serial + "-"):
            continue
        path = os.path.join(releases, name)
        manifest = read_manifest(path)
        if manifest and manifest.get("release_id") == release_id and not integrity(path, manifest, uid, gid, modes):
            return name
    return None


def free_name(releases, serial):
    if not os.path.exists(os.path.join(releases, serial)):
        return serial
    n = 2
    while os.path.exists(os.path.join(releases, "%s-%d" % (serial, n))):
        n += 1
    return "%s-%d" % (serial, n)


def stage(releases, name, release_id, files, modes, uid, gid):
    """Write every file (name: base64 content) with its mode into a hidden directory, fsync, verify, then rename
    it into place."""
    tmp = tempfile.mkdtemp(prefix=".stage-%s-" % name, dir=releases)
    try:
        os.chmod(tmp, 0o750)
        if uid != -1 or gid != -1:
            os.chown(tmp, uid, gid)
        manifest = {"release_id": release_id, "files": {}}
        for fname, content in files.items():
            data = base64.b64decode(content)
            path = os.path.join(tmp, fname)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if uid != -1 or gid != -1:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, modes[fname])
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            manifest["files"][fname] = sha256(data)
        for fname, digest in manifest["files"].items():  # read back what the disk holds
            with open(os.path.join(tmp, fname), "rb") as fh:
                if sha256(fh.read()) != digest:
                    raise Refused("%s did not read back as written (disk or transfer fault)" % fname)
        path = os.path.join(tmp, MANIFEST)
        with open(path, "w") as fh:
            json.dump(manifest, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o640)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        fsync_dir(tmp)
        check_release(tmp, datetime.datetime.now(datetime.timezone.utc))
        os.rename(tmp, os.path.join(releases, name))
        fsync_dir(releases)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reload_pending(dest):
    """The release a switch left un-reloaded, or None."""
    try:
        with open(os.path.join(dest, RELOAD_PENDING)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def mark_reload_pending(dest, name):
    tmp = os.path.join(dest, ".%s-%d" % (RELOAD_PENDING, os.getpid()))
    with open(tmp, "w") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(dest, RELOAD_PENDING))


def switch(dest, name):
    """Point current at releases/<name> (or remove it when name is empty) with one rename."""
    link = os.path.join(dest, "current")
    if name:
        mark_reload_pending(dest, name)  # before the switch: a crash right after it still leaves the mark
    if not name:
        if os.path.islink(link):
            os.unlink(link)
            fsync_dir(dest)
        return
    tmp = os.path.join(dest, ".current-%d-%d" % (os.getpid(), int(time.time() * 1000)))
    os.symlink(os.path.join("releases", name), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(dest)


def prune(releases, keep, protect):
    """Drop the oldest releases beyond `keep`, never the protected ones; clear stale staging dirs."""
    removed = []
    entries = []
    for name in os.listdir(releases):
        path = os.path.join(releases, name)
        if name.startswith(".stage-"):
            if time.time() - os.lstat(path).st_mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)
            continue
        if os.path.isdir(path) and not name.startswith("."):
            entries.append((os.lstat(path).st_mtime, name))
    entries.sort(reverse=True)
    for entry in entries[keep:]:
        name = entry[1]
        if name not in protect:
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)
            removed.append(name)
    return removed


def ahead_of_vault(dest, before, p, now):
    """The facts of the certificate current serves when it is still valid, newer than Vault's (not_before) and
    not a serial Vault knows: its key is on this host only (Vault restored from an older backup). Else None.
    The same rule as partnercerts.deploy.ahead on the controller."""
    if not before or not p["not_before"] or p["known_serials"] is None:
        return None
    release_dir = os.path.join(dest, "releases", before)
    try:
        facts = cert_facts(os.path.join(release_dir, "client.crt"), os.path.join(release_dir, "client.key"))
        vault_nb = datetime.datetime.fromisoformat(p["not_before"])
        nb = datetime.datetime.fromisoformat(facts["not_before"])
        na = datetime.datetime.fromisoformat(facts["not_after"])
    except (OSError, Refused, KeyError, ValueError):
        return None  # no readable certificate: nothing that could be lost
    known = set(p["known_serials"]) | {p["serial"]}
    if facts["serial"] in known or not facts["key_matches"] or nb <= vault_nb or na <= now:
        return None
    return facts


def present(module, p):
    dest, serial, release_id = p["dest"], p["serial"], p["release_id"]
    if not serial or not SAFE_NAME.match(serial) or not release_id or not p["files"]:
        module.fail_json(msg="serial, release_id and files are required with state=present")
    bad = sorted(set(p["files"]) - set(NAMES))
    if bad:
        module.fail_json(msg="unexpected file names: %s" % ", ".join(bad))
    modes_given = p["modes"] or {}
    if set(modes_given) != set(p["files"]) or not all(OCTAL.match(str(m)) for m in modes_given.values()):
        module.fail_json(msg="modes must give an octal mode for each file of files, and only for them")
    files = p["files"]
    modes = dict((k, int(str(v), 8)) for k, v in modes_given.items())
    try:
        uid, gid = ids(p["owner"], p["group"])
    except KeyError:
        module.fail_json(msg="owner %r or group %r does not exist on this host; create it or fix the inventory"
                         % (p["owner"], p["group"]))
    releases = os.path.join(dest, "releases")
    before = current_target(dest) if os.path.isdir(dest) else None
    existing = find_release(releases, serial, release_id, uid, gid, modes)
    result: dict = {"changed": False, "previous": before, "release": existing or before, "switched": False,
                    "staged": False, "removed": [],
                    "diff": {"before": "current: %s\n" % (before or "(none)"), "after": ""}}
    if existing and existing == before:
        if reload_pending(dest) == before:
            # Switched by a deploy that died before reloading the service: report a change, so the
            # play validates, reloads and verifies now.
            result.update(changed=True)
            result["diff"]["after"] = "current: %s (service reload pending)\n" % before
        else:
            result["diff"]["after"] = result["diff"]["before"]
        return result
    newer = ahead_of_vault(dest, before, p, datetime.datetime.now(datetime.timezone.utc))
    if newer:
        module.fail_json(msg="ahead: current serves serial %s (issued %s), newer than Vault's certificate %s (issued "
                             "%s) and unknown to Vault: its key is on the hosts only (Vault restored from a backup "
                             "older than that import?); not replaced; take it back into Vault (README: Disaster "
                             "recovery)" % (newer["serial"], newer["not_before"], serial, p["not_before"]),
                         ahead=True, release=before, serial=newer["serial"], not_before=newer["not_before"],
                         not_after=newer["not_after"], fingerprint_sha256=newer["fingerprint_sha256"],
                         switched=False, previous=before)
    name = existing or free_name(releases, serial)
    result.update(changed=True, release=name)
    result["diff"]["after"] = "current: %s%s\n" % (name, "" if existing else " (new release, serial %s)" % serial)
    if module.check_mode:
        return result
    ensure_dir(dest, uid, gid)
    ensure_dir(releases, uid, gid)
    if not existing:
        stage(releases, name, release_id, files, modes, uid, gid)
        result["staged"] = True
    else:
        check_release(os.path.join(releases, name), datetime.datetime.now(datetime.timezone.utc))
    switch(dest, name)
    result["switched"] = True
    result["removed"] = prune(releases, max(p["keep"], 1), {name, before})
    return result


def rollback(module, p):
    dest, to = p["dest"], p["to"] or ""
    before = current_target(dest) if os.path.isdir(dest) else None
    if to and not SAFE_NAME.match(to):
        module.fail_json(msg="bad release name %r" % to)
    if to and not os.path.isdir(os.path.join(dest, "releases", to)):
        module.fail_json(msg="release %s is not on this host (kept releases only)" % to)
    if before == (to or None):
        return {"changed": False, "release": before}
    if not module.check_mode:
        switch(dest, to)
    return {"changed": True, "release": to or None, "previous": before,
            "diff": {"before": "current: %s\n" % (before or "(none)"), "after": "current: %s\n" % (to or "(none)")}}


def withdrawn(module, p):
    """Remove current and every release of the withdrawn serial; leave the reload-pending mark until the service
    was reloaded without them (state=activated clears it)."""
    dest, serial = p["dest"], p["serial"] or ""
    if not SAFE_NAME.match(serial):
        module.fail_json(msg="serial is required with state=withdrawn")
    releases = os.path.join(dest, "releases")
    before = current_target(dest) if os.path.isdir(dest) else None
    doomed = sorted(n for n in (os.listdir(releases) if os.path.isdir(releases) else [])
                    if n == serial or n.startswith(serial + "-"))
    pending = reload_pending(dest) == WITHDRAWN_MARK
    changed = bool(before or doomed or pending)
    if changed and not module.check_mode:
        mark_reload_pending(dest, WITHDRAWN_MARK)  # first: a crash after the removal still reloads next time
        switch(dest, "")
        for name in doomed:
            shutil.rmtree(os.path.join(releases, name))
        fsync_dir(releases) if doomed else None
    return {"changed": changed, "present": False, "release": None,
            "previous": before, "removed": doomed, "withdrawn": True,
            "diff": {"before": "current: %s\n" % (before or "(none)"), "after": "current: (none, withdrawn)\n"}}


def activated(module, p):
    """The service was reloaded on current: clear the mark its switch left, then report what current
    holds as inspect does (the deploy verifies it in the same round trip)."""
    dest = p["dest"]
    name = current_target(dest) if os.path.isdir(dest) else None
    changed = reload_pending(dest) == (name or WITHDRAWN_MARK)
    if changed and not module.check_mode:
        os.unlink(os.path.join(dest, RELOAD_PENDING))
        fsync_dir(dest)
    out = inspect(module, p)
    out["changed"] = changed
    return out


def secrets_of(files):
    """The secret strings a release's files hold (its key lines, the passwords of client.env), to keep out of
    quoted command output."""
    found: set = set()
    for name, content in (files or {}).items():
        try:
            text = base64.b64decode(content).decode("utf-8", "replace")
        except (TypeError, ValueError):
            continue
        if name == "client.key":
            found.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 16)
        elif name == "client.env":
            found.update(v for k, v in read_env_text(text).items() if "PASSWORD" in k and len(v) >= 4)
    return found


def quoted(out, secrets):
    """The last line a command printed, short and without any secret, for its failure message."""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    if "PRIVATE KEY" in line or "-----BEGIN" in line:
        return "(output withheld: it holds key material)"
    for secret in sorted(secrets, key=len, reverse=True):
        line = line.replace(secret, "********")
    return line if len(line) <= 200 else line[:197] + "..."


def run_step(module, option, command, secrets):
    """Run one of the service's shell commands as a shell task would; a one-line failure, or None."""
    rc, out, err = module.run_command(command, use_unsafe_shell=True, errors="surrogate_then_replace")
    if rc == 0:
        return None
    last = quoted(err, secrets) or quoted(out, secrets)
    return "%s failed: non-zero return code %d%s" % (option, rc, ": " + last if last else "")


def activate(module, p, result):
    """After present (or withdrawn) changed current: validate, reload, record the reload, inspect, in this call.
    On a failure, switch back to the previous release, reload again, record that reload when it succeeded, and
    fail saying what failed and where current is."""
    dest, secrets = p["dest"], secrets_of(p["files"])
    failure = None
    try:
        if p["validate_command"] and not result.get("withdrawn"):
            # A withdrawn credential leaves the service without one: its configuration may not validate until
            # the new certificate is imported, and the reload must happen anyway.
            failure = run_step(module, "validate_command", p["validate_command"], secrets)
        if not failure and p["reload_command"]:
            failure = run_step(module, "reload_command", p["reload_command"], secrets)
        if not failure:
            facts = activated(module, p)
            if facts["problems"]:
                failure = "current does not serve what was deployed: %s" % "; ".join(facts["problems"])
    except Refused as exc:
        failure = str(exc)
    except OSError as exc:
        failure = "%s: %s" % (exc.filename or dest, exc.strerror)
    if not failure:
        facts.pop("changed", None)
        result.update(facts, activated=True)
        return result
    out = dict(result, activated=False, rolled_back=False)
    if not result.get("switched"):
        module.fail_json(msg="%s (current left as it was)" % failure, **out)
    back = result.get("previous") or ""
    try:
        switch(dest, back)
    except OSError as exc:
        module.fail_json(msg="%s; switching back to %s failed too (%s: %s) (current left as it was)"
                         % (failure, back or "nothing", exc.filename or dest, exc.strerror), **out)
    out.update(rolled_back=True, release=back or None)
    out["diff"] = dict(result.get("diff") or {}, after="current: %s (switched back after a failure)\n"
                       % (back or "(none)"))
    again = run_step(module, "reload_command", p["reload_command"], secrets) if p["reload_command"] else None
    if again:
        failure += "; reloading again on %s failed too: %s" % (back or "nothing", again)
    else:
        try:
            activated(module, p)  # the service runs on the previous release again: clear its mark
        except (Refused, OSError):
            pass  # the mark stays: the next deploy reloads again
    module.fail_json(msg="%s (switched back to %s)" % (failure, back or "nothing"), **out)


def inspect(module, p):
    dest = p["dest"]
    out: dict = {"changed": False, "present": False, "release": None, "problems": []}
    try:
        name = current_target(dest) if os.path.isdir(dest) else None
    except Refused as exc:
        out["problems"].append(str(exc))
        return out
    if not name:
        if reload_pending(dest) == WITHDRAWN_MARK:
            out["problems"].append("the withdrawn certificate was removed but the service was not reloaded since "
                                   "(an interrupted deploy); the next deploy reloads it")
        return out
    out["release"] = name
    if reload_pending(dest) == name:
        out["problems"].append("current was switched to %s but the service was not reloaded since (an interrupted "
                               "deploy); the next deploy reloads it" % name)
    release_dir = os.path.join(dest, "releases", name)
    manifest = read_manifest(release_dir)
    if manifest is None:
        out["problems"].append("current points at %s, which has no manifest" % name)
        return out
    out["present"] = True
    out["release_id"] = manifest.get("release_id")
    out["problems"] += integrity(release_dir, manifest, -1, -1, None)
    try:
        facts = cert_facts(os.path.join(release_dir, "client.crt"), os.path.join(release_dir, "client.key"))
        out.update(facts)
        if not facts["key_matches"]:
            out["problems"].append("client.key does not match client.crt")
        with open(os.path.join(release_dir, "ca.crt"), "rb") as fh:
            cas = pem_blocks(fh.read(), "CERTIFICATE")
        out["ca_fingerprint_sha256"] = sha256(cas[0]) if cas else ""
    except (OSError, Refused, KeyError, ValueError) as exc:
        out["problems"].append("cannot read the certificate or key: %s" % exc)
    return out


EXPORTED = ("client.crt", "client.key", "ca.crt", "client.env")


def export(module, p):
    """The files current serves, for recover --from-host (the partnercerts.psa.recover action plugin takes them
    into Vault in memory and returns none of them), once they pass the integrity check against their manifest."""
    dest = p["dest"]
    name = current_target(dest) if os.path.isdir(dest) else None
    if not name:
        raise Refused("nothing deployed in current: no release to recover from this host")
    release_dir = os.path.join(dest, "releases", name)
    manifest = read_manifest(release_dir)
    if manifest is None:
        raise Refused("current points at %s, which has no manifest: not recovered from this host" % name)
    problems = integrity(release_dir, manifest, -1, -1, None)
    if problems:
        raise Refused("current (%s) is not as it was deployed (%s): not recovered from this host"
                      % (name, "; ".join(problems)))
    exported = {}
    for fname in EXPORTED:
        with open(os.path.join(release_dir, fname), "rb") as fh:
            exported[fname] = base64.b64encode(fh.read()).decode("ascii")
    return {"changed": False, "release": name, "exported": exported}


def read_env_text(text):
    env = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = re.sub(r'\\(.)', r'\1', v[1:-1])
            env[k] = v
    return env


def read_env(path):
    with open(path) as fh:
        return read_env_text(fh.read())


def smoke(module, p):
    """Call the API with all three credentials of current: mutual TLS, client_id, Basic auth."""
    current = os.path.join(p["dest"], "current")
    try:
        env = read_env(os.path.join(current, "client.env"))
    except OSError:
        module.fail_json(msg="no deployed credential in %s" % current)
    url = p["url"]
    sep = "&" if "?" in url else "?"
    url = "%s%sclient_id=%s" % (url, sep, quote(env.get("PSA_CLIENT_ID", "")))
    token = base64.b64encode(("%s:%s" % (env.get("PSA_MZP", ""), env.get("PSA_MZP_PASSWORD", ""))).encode()).decode()
    safe_url = p["url"]
    try:
        with urls.open_url(url, headers={"Authorization": "Basic " + token, "Accept": "application/json"},
                           ca_path=os.path.join(current, "ca.crt"), client_cert=os.path.join(current, "client.crt"),
                           client_key=os.path.join(current, "client.key"), timeout=p["timeout"]) as resp:
            return {"changed": False, "status": resp.status, "url": safe_url}
    except HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace")
        module.fail_json(msg="smoke call to %s answered HTTP %s: %s" % (safe_url, exc.code, body), status=exc.code)
    except (URLError, urls.ConnectionError, OSError, ssl.SSLError) as exc:
        module.fail_json(msg="smoke call to %s failed: %s" % (safe_url, getattr(exc, "reason", exc)))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            state=dict(type="str", default="present",
                       choices=["present", "rollback", "inspect", "smoke", "activated", "withdrawn", "export"]),
            release_id=dict(type="str"),
            serial=dict(type="str"),
            files=dict(type="dict", no_log=True),
            modes=dict(type="dict"),
            owner=dict(type="str"),
            group=dict(type="str"),
            keep=dict(type="int", default=3),
            to=dict(type="str"),
            url=dict(type="str"),
            timeout=dict(type="int", default=10),
            # Used by the action plugin on the controller, documented here; the module ignores them.
            mzp=dict(type="str"),
            app=dict(type="str"),
            api_url=dict(type="str"),
            expiring_days=dict(type="int"),
            verify=dict(type="bool", default=False),
            activate=dict(type="bool", default=False),
            validate_command=dict(type="str"),
            reload_command=dict(type="str"),
            not_before=dict(type="str"),
            known_serials=dict(type="list", elements="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    refused = check_dest(p["dest"])
    if refused:
        module.fail_json(msg=refused)
    try:
        if p["state"] == "present":
            result = present(module, p)
        elif p["state"] == "rollback":
            result = rollback(module, p)
        elif p["state"] == "smoke":
            result = smoke(module, p)
        elif p["state"] == "activated":
            result = activated(module, p)
        elif p["state"] == "withdrawn":
            result = withdrawn(module, p)
        elif p["state"] == "export":
            result = export(module, p)
        else:
            result = inspect(module, p)
        if p["activate"] and p["state"] in ("present", "withdrawn") and result["changed"] and not module.check_mode:
            result = activate(module, p, result)
    except Refused as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (exc.filename or p["dest"], exc.strerror))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
