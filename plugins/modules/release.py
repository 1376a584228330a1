#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Host side of a partnercerts release: stage, check, switch atomically, roll back, inspect."""
from __future__ import annotations

DOCUMENTATION = r"""
module: partnercerts_release
short_description: Numbered credential releases with one atomically switched C(current) symlink
description:
  - Lays out C(<dest>/releases/<name>/) with client.crt, client.key, ca.crt, client.p12 and client.env,
    checks on the host that key and certificate match and the certificate is valid, then points
    C(<dest>/current) at it with a single rename of a symlink.
  - Normally called through the action plugin of the same name, which reads the credential from
    Vault on the control node; secrets never appear in the task's arguments or results.
options:
  dest:
    description: Credential directory on the host; an absolute, normalised path without C(..) components
      (C(/etc/psa/fleet), never C(../psa), C(psa/fleet), C(/etc/psa/../x) or C(/etc/psa/)).
    type: path
    required: true
  state:
    description: C(present) stages and switches; C(rollback) points current back at C(to);
      C(inspect) reports what current holds (read-only); C(smoke) calls the API with the deployed credential;
      C(activated) records that the service was reloaded on current (clears the reload-pending mark a
      switch leaves, so a deploy interrupted between its switch and its reload reloads on the next run),
      then reports what current holds, as C(inspect) does.
    type: str
    choices: [present, rollback, inspect, smoke, activated]
    default: present
  release_id: {description: Identity of the desired content (a hash of its sources)., type: str}
  serial: {description: Certificate serial; names the release directory., type: str}
  files: {description: File name to base64 content and mode. Secret., type: dict}
  owner: {description: Owner of the files and directories., type: str}
  group: {description: Group of the files and directories., type: str}
  keep: {description: Releases to keep (current and previous always stay)., type: int, default: 3}
  to: {description: Release directory name for C(rollback); empty removes current., type: str}
  url: {description: URL for C(smoke)., type: str}
  timeout: {description: Seconds for C(smoke)., type: int, default: 10}
author: partnercerts
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

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".manifest.json"
# Written (naming the release) just before current is switched, removed once the service was reloaded
# on it: a deploy that dies in between leaves it, and the next deploy reloads instead of "no change".
RELOAD_PENDING = ".reload-pending"
NAMES = ("client.crt", "client.key", "ca.crt", "client.p12", "client.env")
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
        p = subprocess.run(["openssl"] + args, input=data, capture_output=True, timeout=30)
    except FileNotFoundError:
        raise Refused("openssl is not installed on this host; install it (the checks before switching need it)")
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


def stage(releases, name, release_id, files, uid, gid):
    """Write every file into a hidden directory, fsync, verify, then rename it into place."""
    tmp = tempfile.mkdtemp(prefix=".stage-%s-" % name, dir=releases)
    try:
        os.chmod(tmp, 0o750)
        if uid != -1 or gid != -1:
            os.chown(tmp, uid, gid)
        manifest = {"release_id": release_id, "files": {}}
        for fname, spec in files.items():
            data = base64.b64decode(spec["content"])
            path = os.path.join(tmp, fname)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if uid != -1 or gid != -1:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, int(spec["mode"], 8))
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
    for _, name in entries[keep:]:
        if name not in protect:
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)
            removed.append(name)
    return removed


def present(module, p):
    dest, serial, release_id = p["dest"], p["serial"], p["release_id"]
    if not serial or not SAFE_NAME.match(serial) or not release_id or not p["files"]:
        module.fail_json(msg="serial, release_id and files are required with state=present")
    files = p["files"]
    bad = sorted(set(files) - set(NAMES))
    if bad:
        module.fail_json(msg="unexpected file names: %s" % ", ".join(bad))
    try:
        uid, gid = ids(p["owner"], p["group"])
    except KeyError:
        module.fail_json(msg="owner %r or group %r does not exist on this host; create it or fix the inventory"
                         % (p["owner"], p["group"]))
    modes = dict((k, int(v["mode"], 8)) for k, v in files.items())
    releases = os.path.join(dest, "releases")
    before = current_target(dest) if os.path.isdir(dest) else None
    existing = find_release(releases, serial, release_id, uid, gid, modes)
    result = {"changed": False, "previous": before, "release": existing or before, "switched": False,
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
    name = existing or free_name(releases, serial)
    result.update(changed=True, release=name)
    result["diff"]["after"] = "current: %s%s\n" % (name, "" if existing else " (new release, serial %s)" % serial)
    if module.check_mode:
        return result
    ensure_dir(dest, uid, gid)
    ensure_dir(releases, uid, gid)
    if not existing:
        stage(releases, name, release_id, files, uid, gid)
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


def activated(module, p):
    """The service was reloaded on current: clear the mark its switch left, then report what current
    holds as inspect does (the deploy verifies it in the same round trip)."""
    dest = p["dest"]
    name = current_target(dest) if os.path.isdir(dest) else None
    changed = bool(name) and reload_pending(dest) == name
    if changed and not module.check_mode:
        os.unlink(os.path.join(dest, RELOAD_PENDING))
        fsync_dir(dest)
    out = inspect(module, p)
    out["changed"] = changed
    return out


def inspect(module, p):
    dest = p["dest"]
    out = {"changed": False, "present": False, "release": None, "problems": []}
    try:
        name = current_target(dest) if os.path.isdir(dest) else None
    except Refused as exc:
        out["problems"].append(str(exc))
        return out
    if not name:
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


def read_env(path):
    env = {}
    with open(path) as fh:
        for line in fh:
            if "=" in line and not line.startswith("#"):
                k, v = line.rstrip("\n").split("=", 1)
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = re.sub(r'\\(.)', r'\1', v[1:-1])
                env[k] = v
    return env


def smoke(module, p):
    """Call the API with all three credentials of current: mutual TLS, client_id, Basic auth."""
    try:
        from urllib import error, parse, request
    except ImportError:  # pragma: no cover
        module.fail_json(msg="urllib is missing")
    current = os.path.join(p["dest"], "current")
    try:
        env = read_env(os.path.join(current, "client.env"))
    except OSError:
        module.fail_json(msg="no deployed credential in %s" % current)
    url = p["url"]
    sep = "&" if "?" in url else "?"
    url = "%s%sclient_id=%s" % (url, sep, parse.quote(env.get("PSA_CLIENT_ID", "")))
    ctx = ssl.create_default_context(cafile=os.path.join(current, "ca.crt"))
    ctx.load_cert_chain(os.path.join(current, "client.crt"), os.path.join(current, "client.key"))
    token = base64.b64encode(("%s:%s" % (env.get("PSA_MZP", ""), env.get("PSA_MZP_PASSWORD", ""))).encode()).decode()
    req = request.Request(url, headers={"Authorization": "Basic " + token, "Accept": "application/json"})
    safe_url = p["url"]
    try:
        with request.urlopen(req, context=ctx, timeout=p["timeout"]) as resp:
            return {"changed": False, "status": resp.status, "url": safe_url}
    except error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace")
        module.fail_json(msg="smoke call to %s answered HTTP %s: %s" % (safe_url, exc.code, body), status=exc.code)
    except (error.URLError, OSError, ssl.SSLError) as exc:
        module.fail_json(msg="smoke call to %s failed: %s" % (safe_url, getattr(exc, "reason", exc)))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            state=dict(type="str", default="present",
                       choices=["present", "rollback", "inspect", "smoke", "activated"]),
            release_id=dict(type="str"),
            serial=dict(type="str"),
            files=dict(type="dict", no_log=True),
            owner=dict(type="str"),
            group=dict(type="str"),
            keep=dict(type="int", default=3),
            to=dict(type="str"),
            url=dict(type="str"),
            timeout=dict(type="int", default=10),
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
        else:
            result = inspect(module, p)
    except Refused as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (exc.filename or p["dest"], exc.strerror))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
