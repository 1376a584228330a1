"""Throwaway local servers shared by the benchmark (devtools/bench.py) and the test suite: an OpenBao
dev server on loopback. (The namespaced sshd hosts are devtools/testhosts.py.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from partnercerts.embedded import bao_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevBao:
    """`bao server -dev` on a free loopback port, in memory (gone when stopped), its log in `home`."""

    def __init__(self, home: Path, token_prefix: str = "dev-", start_seconds: float = 30):
        import requests
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token_prefix + uuid.uuid4().hex
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "bao.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-root-token-id={self.token}",
                                      f"-dev-listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("OpenBao did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.1)

    def client(self):
        import hvac
        return hvac.Client(url=self.addr, token=self.token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class DevDovecot:
    """Debian's dovecot (`dovecot-imapd`) as a throwaway IMAP server: its own config, passwd-file,
    Maildirs, log and test CA under `home`, nothing read from /etc; `dovecot -F` as a child process.

    Listens on `host` = 127.0.0.2 (loopback; the certificate also names 127.0.0.1 and localhost):
    dovecot counts a connection whose two ends have the same address as secured, so on 127.0.0.1 it
    would accept LOGIN before STARTTLS whatever the settings. Connections to 127.0.0.2 come from
    127.0.0.1, so `allow_plaintext=False` really refuses LOGIN on `imap_port` until STARTTLS.
    `imaps_port` is implicit TLS. Users log in with the passwords of `users` (`add_user` adds more).
    As root (CI), the mail processes run as `nobody`, chrooted into home/mail, which it owns (see _config).
    Append messages with CRLF line endings: FETCH returns exactly those bytes."""

    host = "127.0.0.2"

    def __init__(self, home: Path, users: dict[str, str] | None = None, allow_plaintext: bool = False,
                 start_seconds: float = 20):
        import shutil
        binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
        if binary is None:
            raise FileNotFoundError("dovecot not installed: run scripts/install-system-deps (as root)")
        self.home = home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.allow_plaintext = allow_plaintext
        self.users: dict[str, str] = {}
        self.imaps_port = self._free_port()
        self.imap_port = self._free_port()
        while self.imap_port == self.imaps_port:
            self.imap_port = self._free_port()
        self.conf_path = self.home / "dovecot.conf"
        self.passwd_dir = self.home / "passwd.d"  # one passwd-file per user (see _write_passwd)
        self.log_path = self.home / "dovecot.log"
        self.mail_dir = self.home / "mail"
        self.ca_file = self.home / "ca.pem"
        self.proc: subprocess.Popen | None = None
        for sub in ("run", "state", "passwd.d", "mail", "mail/.tmp"):
            (self.home / sub).mkdir(exist_ok=True)
        if os.getuid() == 0:  # the mail processes' unprivileged owner of home/mail (see _config)
            import pwd
            owner = next(pwd.getpwnam(u) for u in ("nobody", "dovenull") if self._user_exists(u))
            for path in (self.mail_dir, self.mail_dir / ".tmp"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._make_certificates()
        for name, password in (users or {}).items():
            self.add_user(name, password)
        self.conf_path.write_text(self._config())
        self._stdio = open(self.home / "dovecot.stdio.log", "wb")
        self.proc = subprocess.Popen([binary, "-F", "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                     stdout=self._stdio, stderr=self._stdio, start_new_session=True,
                                     env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        self._wait_ready(start_seconds)

    # -- set-up ---------------------------------------------------------------------------------
    def _free_port(self) -> int:
        with socket.socket() as s:
            s.bind((self.host, 0))
            return s.getsockname()[1]

    @staticmethod
    def _check_credentials(name: str, password: str) -> str:
        bad = set(":\n\r\0")
        if (not name or not password or name.startswith(".") or bad & set(name + password)
                or any(c in name for c in " /%\"\\*")):
            raise ValueError(f"user name or password not usable in a passwd-file: {name!r}")
        return password

    def _make_certificates(self) -> None:
        """A test CA (`ca_file`) and its server certificate for 127.0.0.1, 127.0.0.2 and localhost."""
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"DevDovecot test CA {uuid.uuid4().hex[:8]}")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(ca_ski, critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address(self.host))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file = self.home / "server.pem"
        self.key_file = self.home / "server.key"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def _config(self) -> str:
        import grp
        import pwd
        h, uid, gid = self.home, os.getuid(), os.getgid()
        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
        if uid == 0:
            # Dovecot never lets a mail process run as root ("Mail access not allowed for root"), and
            # imap-login refuses root too. The mail processes chroot into home/mail (as root, so the 0700
            # directories above it do not matter), then become the unprivileged owner of home/mail.
            mail_uid, mail_gid = self.mail_dir.stat().st_uid, self.mail_dir.stat().st_gid
            login_user = pwd.getpwuid(mail_uid).pw_name
            accounts = f"""\
first_valid_uid = 1
first_valid_gid = 1
mail_uid = {mail_uid}
mail_gid = {mail_gid}
mail_chroot = {self.mail_dir}
valid_chroot_dirs = {self.mail_dir}
mail_location = maildir:/%u
mail_temp_dir = /.tmp
"""
            userdb_args = "home=/%u"
            chroot = ""
        else:
            # Not root: everything runs as the current user, who owns home; and nothing can chroot.
            login_user = user
            accounts = f"""\
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{self.mail_dir}/%u
"""
            userdb_args = f"uid={uid} gid={gid} home={self.mail_dir}/%u"
            chroot = "  chroot =\n"  # anvil and imap-login chroot by default
        return f"""\
# DevDovecot: self-contained, nothing included from /etc.
instance_name = devdovecot-{uuid.uuid4().hex[:12]}
base_dir = {h}/run
state_dir = {h}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
protocols = imap
listen = {self.host}
shutdown_clients = yes
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {login_user}
{accounts}mail_fsync = never
namespace inbox {{
  inbox = yes
  separator = /
}}
ssl = {"yes" if self.allow_plaintext else "required"}
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
disable_plaintext_auth = {"no" if self.allow_plaintext else "yes"}
auth_mechanisms = plain login
auth_verbose = yes
auth_cache_size = 0
# Failed logins answer at once: no failure delay, and no per-IP penalty (anvil's penalty socket off).
auth_failure_delay = 0
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
userdb {{
  driver = static
  args = {userdb_args}
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
"""

    @staticmethod
    def _user_exists(name: str) -> bool:
        import pwd
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def _write_passwd(self, name: str) -> None:
        """Write passwd.d/<name> atomically. Dovecot stats a passwd-file at most once a second, so one
        shared file would hide a user added within a second of a lookup: a new user's file is new to it
        and read at once; after a password change, wait for the next second, when it stats the file again."""
        path = self.passwd_dir / name
        old = path.stat().st_mtime if path.exists() else None
        tmp = self.passwd_dir / f".{name}.tmp"  # never a user's file: names do not start with "."
        tmp.write_text(f"{name}:{{PLAIN}}{self.users[name]}::::::\n")
        tmp.chmod(0o600)
        if old is not None:  # a new mtime even within the same second (the size may be the same)
            stamp = max(int(time.time()), int(old) + 1)
            os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)
        if old is not None:
            time.sleep(1 - time.time() % 1 + 0.01)

    def _log_tail(self, chars: int = 3000) -> str:
        text = ""
        for path in (self.home / "dovecot.stdio.log", self.log_path):
            if path.exists():
                text += f"--- {path.name}\n" + path.read_text(errors="replace")[-chars:]
        return text

    def _wait_ready(self, seconds: float) -> None:
        """Wait until a TLS LOGIN on the IMAPS port and a SELECT after it succeed (the mail process works
        too), as a throwaway user that is removed afterwards."""
        import imaplib
        import secrets
        import shutil
        probe = f"devdovecot-probe-{secrets.token_hex(4)}"
        self.add_user(probe, secrets.token_hex(12))
        deadline = time.monotonic() + seconds
        last: Exception | None = None
        try:
            while True:
                try:
                    with self.connect(probe) as c:
                        self._ok(c.select("INBOX"), "SELECT INBOX")
                    return
                except (OSError, imaplib.IMAP4.error, RuntimeError) as e:
                    last = e
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dovecot did not accept a TLS LOGIN on {self.host}:{self.imaps_port} "
                                       f"within {seconds:g} s ({last!r}):\n{self._log_tail()}")
                time.sleep(0.05)
        finally:
            del self.users[probe]
            (self.passwd_dir / probe).unlink(missing_ok=True)
            shutil.rmtree(self.mail_dir / probe, ignore_errors=True)

    # -- clients --------------------------------------------------------------------------------
    def ssl_context(self):
        """A client SSLContext that trusts only this server's test CA."""
        import ssl
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connect(self, user: str):
        """An IMAP4_SSL connection (imaplib) logged in as `user`; use it in a `with` block."""
        import imaplib
        client = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=self.ssl_context(), timeout=5)
        try:
            client.login(user, self.users[user])
        except BaseException:
            client.shutdown()
            raise
        return client

    @staticmethod
    def quote(folder: str) -> str:
        """A mailbox name as an IMAP quoted string (ASCII names; imaplib does not quote them)."""
        return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'

    @staticmethod
    def _ok(result: tuple, what: str) -> list:
        typ, data = result
        if typ != "OK":
            raise RuntimeError(f"IMAP {what} failed: {typ} {data!r}")
        return data

    # -- users and mail -------------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Add a user, at once; or change a password (this waits up to a second: see _write_passwd)."""
        self.users[name] = self._check_credentials(name, password)
        self._make_mail_home(name)
        self._write_passwd(name)

    def _make_mail_home(self, name: str) -> None:
        """home/mail/<name>, owned like home/mail (dovecot would only create it after a failed chdir)."""
        path = self.mail_dir / name
        if not path.exists():
            path.mkdir(mode=0o700)
            os.chown(path, self.mail_dir.stat().st_uid, self.mail_dir.stat().st_gid)

    def deliver(self, user: str, message_bytes: bytes, folder: str = "INBOX") -> None:
        """APPEND a message to `folder` of `user` (created first when missing)."""
        with self.connect(user) as c:
            if folder.upper() != "INBOX":
                typ, data = c.create(self.quote(folder))
                if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if isinstance(d, bytes)):
                    raise RuntimeError(f"IMAP CREATE {folder} failed: {data!r}")
            self._ok(c.append(self.quote(folder), None, None, message_bytes), f"APPEND to {folder}")

    def folder_uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """The UIDs in `folder`, ascending."""
        with self.connect(user) as c:
            self._ok(c.select(self.quote(folder), readonly=True), f"SELECT {folder}")
            data = self._ok(c.uid("SEARCH", "ALL"), "UID SEARCH")
            return sorted(int(u) for u in b" ".join(data).split())

    def _fetch(self, user: str, folder: str, items: str) -> list:
        with self.connect(user) as c:
            self._ok(c.select(self.quote(folder), readonly=True), f"SELECT {folder}")
            if not self._ok(c.uid("SEARCH", "ALL"), "UID SEARCH")[0].split():
                return []
            return self._ok(c.uid("FETCH", "1:*", f"(UID {items})"), "UID FETCH")

    def fetch_all(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in `folder`, by ascending UID (fetched with BODY.PEEK[]: no \\Seen set)."""
        import re
        found = []
        for item in self._fetch(user, folder, "BODY.PEEK[]"):
            if isinstance(item, tuple):
                found.append((int(re.search(rb"UID (\d+)", item[0]).group(1)), item[1]))
        return [body for _, body in sorted(found)]

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags and keywords of each message in `folder`."""
        import re
        found: dict[int, set[str]] = {}
        for item in self._fetch(user, folder, "FLAGS"):
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid, flags = re.search(rb"UID (\d+)", line), re.search(rb"FLAGS \(([^)]*)\)", line)
            if uid and flags:  # \\Recent belongs to a session, not to the message: left out
                found[int(uid.group(1))] = set(flags.group(1).decode().split()) - {"\\Recent"}
        return found

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """The UIDVALIDITY of `folder`."""
        import re
        with self.connect(user) as c:
            data = self._ok(c.status(self.quote(folder), "(UIDVALIDITY)"), f"STATUS {folder}")
            return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    def recreate_folder(self, user: str, folder: str) -> None:
        """DELETE `folder` (with its messages) and CREATE it again: it gets a new UIDVALIDITY."""
        if folder.upper() == "INBOX":
            raise ValueError("INBOX cannot be deleted")
        with self.connect(user) as c:
            self._ok(c.delete(self.quote(folder)), f"DELETE {folder}")
            self._ok(c.create(self.quote(folder)), f"CREATE {folder}")

    # -- teardown -------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """The live (not zombie) processes of this server: dovecot and its children, one process group."""
        if self.proc is None:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
            if fields[0] not in ("Z", "X") and int(fields[2]) == self.proc.pid:
                found.append(int(entry.name))
        return sorted(found)

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Terminate dovecot and every process it started (all in its own process group); idempotent."""
        proc = self.proc
        if proc is not None:
            self._signal_group(signal.SIGTERM)  # the whole group at once: usually gone in milliseconds
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:  # the master sometimes waits ~1 s for a child: no need here
                self._signal_group(signal.SIGKILL)
                proc.wait()
            deadline = time.monotonic() + 5
            while self.pids():  # children outliving the master (now reparented) are still in its group
                self._signal_group(signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot processes left after stop: {self.pids()}")
                time.sleep(0.02)
            self.proc = None
        stdio = getattr(self, "_stdio", None)
        if stdio is not None and not stdio.closed:
            stdio.close()


class DevTinyproxy:
    """Debian's tinyproxy as a throwaway forward proxy on loopback: its own config under `home`,
    nothing read from /etc; `tinyproxy -d -c CONF` (foreground) as a child process in its own group.

    Listens on 127.0.0.1:`port` (`url`), accepts clients from 127.0.0.1 only. CONNECT is allowed to
    port 443 and to `connect_ports`; with `refuse_connect=True` only to a port none of them is, so
    every CONNECT to them is answered 403 (tinyproxy allows every port when no ConnectPort is set).
    Its log goes to its stderr, into home/tinyproxy.log (as root tinyproxy runs as nobody, who could
    not open a file under a 0700 temporary directory): `log_text()`, `connects()` show what it carried."""

    def __init__(self, home: Path, connect_ports: tuple[int, ...] = (), refuse_connect: bool = False,
                 start_seconds: float = 10):
        import shutil
        binary = shutil.which("tinyproxy") or next((p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy")
                                                    if os.path.exists(p)), None)
        if binary is None:
            raise FileNotFoundError("tinyproxy not installed: run scripts/install-system-deps (as root)")
        self.home = home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        allowed = {443, *connect_ports}
        refused_port = next(p for p in range(9, 65536) if p not in allowed)  # 9 (discard) unless listed
        self.connect_ports = (refused_port,) if refuse_connect else tuple(sorted(allowed))
        self.conf_path = self.home / "tinyproxy.conf"
        self.log_path = self.home / "tinyproxy.log"
        self.conf_path.write_text(self._config())
        self._log = open(self.log_path, "wb")
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [binary, "-d", "-c", str(self.conf_path)], stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        self._wait_ready(start_seconds)

    def _config(self) -> str:
        lines = [
            "# DevTinyproxy: self-contained, nothing included from /etc.",
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 30",
            "MaxClients 20",
            "LogLevel Info",  # Info: every request line (CONNECT host:port) and every refusal
            f'PidFile "{self.home / "tinyproxy.pid"}"',
            "DisableViaHeader Yes",
            *(f"ConnectPort {p}" for p in self.connect_ports),
        ]
        if os.getuid() == 0:  # tinyproxy refuses to run as root without User/Group
            import grp
            import pwd
            nobody = pwd.getpwnam("nobody")
            lines += ["User nobody", f"Group {grp.getgrgid(nobody.pw_gid).gr_name}"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, seconds: float) -> None:
        """Wait until tinyproxy accepts TCP connections on its port."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tinyproxy did not listen on 127.0.0.1:{self.port} within {seconds:g} s:\n"
                                   + self.log_text()[-2000:])
            time.sleep(0.05)

    def log_text(self) -> str:
        """Everything tinyproxy logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connects(self) -> list[str]:
        """The `host:port` of every CONNECT it was asked for, in order (allowed or refused)."""
        import re
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP/", self.log_text())

    def stop(self) -> None:
        """Terminate tinyproxy (its whole process group); idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if not self._log.closed:
            self._log.close()
