"""Notifications against real local servers: an aiosmtpd SMTP server (STARTTLS, implicit TLS, plain
loopback, AUTH) and an HTTP(S) webhook receiver, with certificates of a test CA."""
import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from partnercerts import mail
from partnercerts.errors import Error, ServiceFailure, UserError
from partnercerts.mail import SmtpConfig
from partnercerts.notify import Event, Kind, Notifier, NotifyConfig
from tests import pki
from tests.conftest import free_port

WHERE = "inv/group_vars/all/notify.yml: partnercerts_notify"
USER = "partnercerts@example.com"
PASSWORD = "smtp-S3cret-1f9c7a"
UTF8_USER = "ops@example.com"
UTF8_PASSWORD = "Pässwort-ünïcode-77"
FAKE_SECRET = "FAKE-SECRET-9d2e4b1c7a"
# A fake key-shaped string, assembled so the repository holds no key block.
_LABEL = "PRIVATE" + " KEY"
FAKE_KEY = f"-----BEGIN {_LABEL}-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END {_LABEL}-----\n"
AT = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.timezone.utc)


# -- servers -------------------------------------------------------------------------------


@dataclass
class Tls:
    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    """A test CA and a server certificate for 127.0.0.1 (IP SAN), valid now."""
    d = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)
    ca = pki.CA("Test Notification CA", now=now)
    key = pki.key()
    cert = (x509.CertificateBuilder().subject_name(pki.name("127.0.0.1", "Test servers")).issuer_name(ca.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return Tls(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    content: bytes
    tls: bool
    authenticated: bool

    def parsed(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)

    def text(self) -> str:
        """Everything a reader sees: headers and the decoded body."""
        m = self.parsed()
        return "".join(f"{k}: {v}\n" for k, v in m.items()) + m.get_content()


class Mailbox:
    """aiosmtpd handler: collects what it accepts; refuses recipients at nobody@."""

    def __init__(self):
        self.messages: list[Received] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                      server.transport.get_extra_info("ssl_object") is not None,
                                      bool(session.authenticated)))
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    users = {USER.encode(): PASSWORD.encode(), UTF8_USER.encode(): UTF8_PASSWORD.encode()}
    ok = isinstance(auth_data, LoginPassword) and users.get(auth_data.login) == auth_data.password
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@contextlib.contextmanager
def smtp_server(tls: Tls | None, mode: str = "starttls", auth: bool = True):
    """mode: starttls (STARTTLS required before anything), tls (implicit TLS) or none (plain)."""
    box = Mailbox()
    kwargs = dict(hostname="127.0.0.1", port=free_port(), server_hostname="smtp.test")
    if auth:
        # AUTH only over TLS; aiosmtpd counts only STARTTLS as TLS, so implicit TLS needs the flag off.
        kwargs.update(authenticator=authenticator, auth_require_tls=(mode != "tls"))
    if mode == "starttls":
        kwargs.update(tls_context=tls.server_context(), require_starttls=True)
    elif mode == "tls":
        kwargs.update(ssl_context=tls.server_context())
    controller = Controller(box, **kwargs)
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@dataclass
class Hook:
    status: int
    location: str = ""

    def __post_init__(self):
        self.requests: list = []


@contextlib.contextmanager
def webhook_server(tls: Tls | None, status: int = 204, location: str = ""):
    hook = Hook(status, location)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = b'{"error": "receiver broke"}' if hook.status >= 400 else b""
            self.send_response(hook.status)
            if hook.location:
                self.send_header("Location", hook.location)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_GET = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook, f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- helpers -----------------------------------------------------------------------------------


def events() -> list[Event]:
    return [
        Event(Kind.REMINDER, "MZP123456", "fleet", "CSR submitted 9 days ago, still waiting for the authority",
              {"pending_age_days": 9, "submitted_at": "2026-11-19T06:00:00+00:00"}, AT),
        Event(Kind.EXPIRED, "MZP123456", "telematics", "certificate expired on 2026-11-20",
              {"serial": "1A2B3C", "not_after": "2026-11-20T00:00:00+00:00", "days_left": -8}, AT),
        Event(Kind.DEPLOYED, "MZP654321", "fleet", "serial 4D5E deployed to 2 hosts",
              {"serial": "4D5E", "hosts": ["local-a", "local-b"], "hosts_in_sync": 2, "hosts_total": 2}, AT),
    ]


def smtp_mapping(port, tls=None, security="starttls", user=USER):
    m = {"host": "127.0.0.1", "port": port, "security": security, "timeout": 10}
    if tls:
        m["cafile"] = tls.ca_file
    if user:
        m["user"] = user
    return m


def config(smtp=None, webhook=None, events_filter=None, to=("ops@example.com", "oncall@example.com")) -> NotifyConfig:
    raw = {}
    if smtp is not None:
        raw["email"] = {"to": list(to), "from": "partnercerts@example.com", "smtp": smtp}
    if webhook is not None:
        raw["webhook"] = webhook
    if events_filter is not None:
        raw["events"] = events_filter
    return NotifyConfig.from_mapping(raw, WHERE)


class Log(list):
    def __call__(self, line: str) -> None:
        assert isinstance(line, str) and "\n" not in line
        self.append(line)


def message(to="ops@example.com") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "partnercerts@example.com"
    m["To"] = to
    m["Subject"] = "test"
    m.set_content("hello\n")
    return m


# -- e-mail ----------------------------------------------------------------------------------------


def test_one_mail_per_run_with_every_event_and_one_webhook_call(tls):
    log = Log()
    with smtp_server(tls) as (box, port), webhook_server(tls) as (hook, url):
        cfg = config(smtp_mapping(port, tls), {"url": url + "/hooks/partnercerts", "timeout": 5, "cafile": tls.ca_file})
        failures = Notifier(cfg, PASSWORD, log).send(events())
    assert failures == []
    (got,) = box.messages
    assert got.tls and got.authenticated
    assert got.mail_from == "partnercerts@example.com"
    assert got.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    m = got.parsed()
    assert m["Subject"] == "partnercerts: 3 events (1 deployed, 1 reminder, 1 expired)"
    assert m["Message-ID"] and m["Date"] and m["Auto-Submitted"] == "auto-generated"
    assert m.get_content_type() == "text/plain"
    body = m.get_content()
    for e in events():
        assert f"[{e.kind.value}] {e.mzp}/{e.app}: {e.message}" in body
    assert "serial: 1A2B3C" in body and "hosts: local-a, local-b" in body and "pending_age_days: 9" in body
    assert "at: 2026-11-28T06:00:00+00:00" in body

    ((method, path, headers, raw),) = hook.requests
    assert (method, path) == ("POST", "/hooks/partnercerts")
    assert headers["content-type"] == "application/json"
    payload = json.loads(raw)
    assert payload["source"] == "partnercerts"
    assert payload["events"] == [
        {"kind": e.kind.value, "mzp": e.mzp, "app": e.app, "message": e.message, "details": e.details,
         "at": "2026-11-28T06:00:00+00:00"} for e in events()]
    assert any("e-mail sent to ops@example.com, oncall@example.com" in line for line in log)
    assert any("answered 204" in line for line in log)
    assert all("/hooks/partnercerts" not in line for line in log), "the webhook path may hold a token"


def test_send_returns_the_message_id_and_sets_one_when_missing(tls):
    with smtp_server(tls) as (box, port):
        cfg = SmtpConfig.from_mapping(smtp_mapping(port, tls), "t")
        m = message()
        mid = mail.send(cfg, m, PASSWORD)
        kept = message()
        kept["Message-ID"] = "<fixed.1@example.com>"
        assert mail.send(cfg, kept, PASSWORD) == "<fixed.1@example.com>"
    assert mid.startswith("<") and mid.endswith("@example.com>")
    assert [r.parsed()["Message-ID"] for r in box.messages] == [mid, "<fixed.1@example.com>"]


def test_implicit_tls_and_a_non_ascii_password(tls):
    with smtp_server(tls, mode="tls") as (box, port):
        cfg = SmtpConfig.from_mapping({"host": "127.0.0.1", "port": port, "security": "tls", "user": UTF8_USER,
                                       "cafile": tls.ca_file}, "t")
        mail.send(cfg, message(), UTF8_PASSWORD)
    (got,) = box.messages
    assert got.tls and got.authenticated


def test_plain_smtp_is_allowed_to_loopback(tls):
    with smtp_server(None, mode="none", auth=False) as (box, port):
        cfg = SmtpConfig.from_mapping({"host": "127.0.0.1", "port": port, "security": "none"}, "t")
        mail.send(cfg, message(), None)
    (got,) = box.messages
    assert not got.tls


def test_the_event_filter_and_runs_with_nothing_to_say(tls):
    with smtp_server(tls) as (box, port), webhook_server(tls) as (hook, url):
        cfg = config(smtp_mapping(port, tls), {"url": url, "cafile": tls.ca_file}, events_filter=["expired"])
        log = Log()
        assert Notifier(cfg, PASSWORD, log).send(events()) == []
        assert Notifier(cfg, PASSWORD, log).send([e for e in events() if e.kind != Kind.EXPIRED]) == []
        assert Notifier(cfg, PASSWORD, log).send([]) == []
        assert Notifier(None, PASSWORD, log).send(events()) == []
    (got,) = box.messages
    assert got.parsed()["Subject"] == "partnercerts: 1 event (1 expired)"
    assert "[reminder]" not in got.parsed().get_content()
    ((_, _, _, raw),) = hook.requests
    assert [e["kind"] for e in json.loads(raw)["events"]] == ["expired"]


# -- failures: returned and logged, never raised --------------------------------------------------


def test_a_refused_smtp_server_is_a_failure_and_the_webhook_still_goes_out(tls):
    log = Log()
    port = free_port()  # nothing listens there
    with webhook_server(tls) as (hook, url):
        cfg = config(smtp_mapping(port, tls), {"url": url, "cafile": tls.ca_file})
        failures = Notifier(cfg, PASSWORD, log).send(events())
    assert failures == [f"notification e-mail failed: SMTP server 127.0.0.1:{port}: connection refused; "
                        "check host, port and that the server runs"]
    assert failures[0] in log
    assert len(hook.requests) == 1


def test_a_webhook_answering_500_is_a_failure_and_the_mail_still_goes_out(tls):
    log = Log()
    with smtp_server(tls) as (box, port), webhook_server(tls, status=500) as (hook, url):
        cfg = config(smtp_mapping(port, tls), {"url": url + "/T0KEN-in-path", "cafile": tls.ca_file})
        failures = Notifier(cfg, PASSWORD, log).send(events())
    (failure,) = failures
    assert failure.startswith(f"notification webhook failed: webhook {url}/...: answered 500")
    assert failure in log and "T0KEN" not in " ".join(log)
    assert len(box.messages) == 1 and len(hook.requests) == 1


def test_a_redirect_is_not_followed(tls):
    with webhook_server(tls, status=302, location="http://192.0.2.1/elsewhere") as (hook, url):
        failures = Notifier(config(webhook={"url": url, "cafile": tls.ca_file}), None, Log()).send(events())
    (failure,) = failures
    assert "answered 302" in failure and "redirects are not followed" in failure
    assert [r[0] for r in hook.requests] == ["POST"]


def test_plain_http_webhook_only_to_loopback(tls):
    with webhook_server(None) as (hook, url):
        assert Notifier(config(webhook={"url": url}), None, Log()).send(events()) == []
    assert len(hook.requests) == 1
    with pytest.raises(UserError, match=r"notify.yml: partnercerts_notify: webhook: field 'url' is plain http to "
                                        r"hooks.example.com, which is not a loopback address; use https"):
        config(webhook={"url": "http://hooks.example.com/partnercerts"})


def test_an_untrusted_webhook_certificate_is_a_failure(tls):
    with webhook_server(tls) as (hook, url):
        (failure,) = Notifier(config(webhook={"url": url}), None, Log()).send(events())
    assert "TLS failure: certificate verify failed" in failure and "give 'cafile'" in failure
    assert hook.requests == []


def test_wrong_smtp_password_is_a_clear_error_without_the_password(tls):
    wrong = "Wr0ng-" + PASSWORD
    with smtp_server(tls) as (box, port):
        cfg = SmtpConfig.from_mapping(smtp_mapping(port, tls), "t")
        with pytest.raises(ServiceFailure) as exc:
            mail.send(cfg, message(), wrong)
        log = Log()
        failures = Notifier(config(smtp_mapping(port, tls)), wrong, log).send(events())
    text = str(exc.value)
    assert text.startswith(f"SMTP server 127.0.0.1:{port}: authentication failed for user '{USER}' (535")
    assert "\n" not in text
    (failure,) = failures
    assert "authentication failed" in failure and failure in log
    for seen in [text, *failures, *log]:
        assert wrong not in seen and PASSWORD not in seen
    assert box.messages == []


@pytest.mark.parametrize("case,match", [
    ("untrusted", r"TLS failure: certificate verify failed.*give 'cafile'"),
    ("no_starttls", r"does not offer STARTTLS, so the message would travel in clear; refused"),
    ("implicit_to_plain", r"TLS failure: .*is port \d+ really security tls"),
    ("recipient", r"refused recipient\(s\) nobody@example.com \(550 .*no such user\)"),
    ("no_password", r"user 'partnercerts@example.com' is set but no password was given"),
    ("no_auth_offered", r"SMTP AUTH extension not supported by server"),
    ("timeout", r"no answer within 0.5 s while connecting \(timeout\)"),
])
def test_smtp_failures_are_one_line_naming_server_and_cause(tls, case, match):
    with contextlib.ExitStack() as stack:
        if case == "timeout":
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)  # accepts into the backlog, never greets
            port = sock.getsockname()[1]
        else:
            mode = {"no_starttls": "none", "implicit_to_plain": "none", "no_auth_offered": "none"}.get(case, "starttls")
            _, port = stack.enter_context(smtp_server(tls if mode != "none" else None, mode=mode,
                                                      auth=case != "no_auth_offered"))
        raw = smtp_mapping(port, None if case == "untrusted" else tls)
        if case == "implicit_to_plain":
            raw["security"] = "tls"
        if case == "timeout":
            raw["timeout"] = 0.5
        to = "nobody@example.com" if case == "recipient" else "ops@example.com"
        cfg = SmtpConfig.from_mapping(raw, "t")
        if case == "no_auth_offered":
            cfg = SmtpConfig("127.0.0.1", port, "none", user=USER)
        with pytest.raises(Error, match=match) as exc:  # the server's failure, or a missing password
            mail.send(cfg, message(to), None if case == "no_password" else PASSWORD)
    text = str(exc.value)
    assert text.startswith(f"SMTP server 127.0.0.1:{port}") and "\n" not in text and PASSWORD not in text


# -- clear text refused --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["mail.example.com", "192.0.2.10", "10.0.0.1", "localhost.example.com",
                                  "::ffff:0a00:0001"])
def test_security_none_to_a_non_loopback_host_is_refused(host, monkeypatch):
    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    with pytest.raises(UserError,
                       match=rf"{WHERE}: email: smtp: security 'none' sends the password .* in clear") as exc:
        config({"host": host, "security": "none", "user": USER})
    assert repr(host) in str(exc.value)
    with pytest.raises(UserError, match=r"SMTP server .*: security 'none' .* only allowed to a loopback address"):
        mail.send(SmtpConfig(host, 25, "none", user=USER), message(), PASSWORD)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("0.0.0.0", False), ("192.0.2.1", False), ("mail.example.com", False),
    ("localhost.example.com", False),
])
def test_is_loopback(host, loopback):
    assert mail.is_loopback(host) is loopback


# -- secrets never leave ---------------------------------------------------------------------------


def test_no_secret_in_any_notification(tls, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", FAKE_SECRET)
    monkeypatch.setenv("PARTNERCERTS_SMTP_PASSWORD", FAKE_SECRET)
    monkeypatch.setenv("PSA_MZP_PASSWORD", FAKE_SECRET)
    careless = [
        *events(),
        Event(Kind.CERTIFICATE_IMPORTED, "MZP123456", "fleet", "imported serial 6F70",
              {"serial": "6F70", "p12_password": FAKE_SECRET, "key_pem": FAKE_KEY, "token": FAKE_SECRET,
               "error": FAKE_KEY, "hosts": ["local-a", FAKE_KEY], "nested": {"password": FAKE_SECRET}}, AT),
        Event(Kind.DEPLOY_FAILED, "MZP123456", "fleet", "leaked " + FAKE_KEY,
              {"failed_hosts": {"local-a": "timeout"}}, AT),
    ]
    log = Log()
    with smtp_server(tls) as (box, port), webhook_server(tls) as (hook, url):
        failures = Notifier(config(smtp_mapping(port, tls), {"url": url, "cafile": tls.ca_file}),
                            PASSWORD, log).send(careless)
    assert failures == []
    (got,) = box.messages
    ((_, _, _, raw),) = hook.requests
    seen = [got.content.decode("utf-8", "replace"), got.text(), raw.decode(), *log]
    for text in seen:
        for secret in (FAKE_SECRET, PASSWORD, "PRIVATE KEY", "-----BEGIN", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"):
            assert secret not in text
    imported = json.loads(raw)["events"][3]
    assert imported["details"] == {"serial": "6F70"}
    failed = json.loads(raw)["events"][4]
    assert failed["message"] == "(message withheld: it looked like key material)"
    assert failed["details"] == {"failed_hosts": {"local-a": "timeout"}}
    assert any("left out p12_password, key_pem, token, error, hosts, nested" in line for line in log)


# -- configuration -------------------------------------------------------------------------------


def test_a_full_configuration_is_read():
    cfg = NotifyConfig.from_mapping({
        "email": {"to": ["ops@example.com"], "from": "partnercerts@example.com",
                  "smtp": {"host": "smtp.example.com", "user": "partnercerts"}},
        "webhook": {"url": "https://hooks.example.com/partnercerts", "timeout": 10},
        "events": ["csr_submitted", "expired"],
    }, WHERE)
    assert cfg.email.to == ("ops@example.com",) and cfg.email.sender == "partnercerts@example.com"
    assert cfg.email.smtp == SmtpConfig("smtp.example.com", 587, "starttls", "partnercerts", 30, None)
    assert cfg.webhook.url == "https://hooks.example.com/partnercerts" and cfg.webhook.timeout == 10
    assert cfg.events == {Kind.CSR_SUBMITTED, Kind.EXPIRED}
    assert NotifyConfig.from_mapping({"webhook": {"url": "https://h.example.com/"}}, WHERE).events == set(Kind)
    assert SmtpConfig.from_mapping({"host": "smtp.example.com", "security": "tls"}, "t").port == 465


@pytest.mark.parametrize("raw,match", [
    ({}, "configure 'email' and/or 'webhook'"),
    ({"webhook": {"url": "https://h.example.com"}, "events": ["expired", "exploded"]},
     "unknown kind\\(s\\) 'exploded'"),
    ({"webhook": {"url": "https://h.example.com"}, "events": []}, "field 'events' must list"),
    ({"webhook": {"url": "ftp://h.example.com"}}, "webhook: field 'url' must be an https:// URL"),
    ({"webhook": {"url": "https://u:p@h.example.com"}}, "must not carry user:password@"),
    ({"webhook": {"url": "https://h.example.com", "timeout": 0}}, "webhook: field 'timeout' is 0"),
    ({"email": {"to": ["not-an-address"], "from": "a@example.com", "smtp": {"host": "s.example.com"}}},
     "email: field 'to' is 'not-an-address'"),
    ({"email": {"to": ["a@example.com"], "smtp": {"host": "s.example.com"}}}, "email: field 'from' is None"),
    ({"email": {"to": ["a@example.com"], "from": "a@example.com", "smtp": {"host": "s.example.com", "port": "x"}}},
     "email: smtp: field 'port' is 'x'"),
    ({"email": {"to": ["a@example.com"], "from": "a@example.com",
                "smtp": {"host": "s.example.com", "security": "ssl"}}},
     "email: smtp: field 'security' is 'ssl'"),
    ({"email": {"to": ["a@example.com"], "from": "a@example.com", "smtp": {"port": 25}}}, "email: smtp: field 'host'"),
    ({"email": {"to": ["a@example.com"], "from": "a@example.com",
                "smtp": {"host": "s.example.com", "password": FAKE_SECRET}}}, "field 'password' is not allowed"),
    ({"sms": {}}, "unknown field\\(s\\) sms"),
])
def test_configuration_errors_name_the_place_and_the_field(raw, match):
    with pytest.raises(UserError, match=match) as exc:
        NotifyConfig.from_mapping(raw, WHERE)
    assert str(exc.value).startswith(WHERE) and "\n" not in str(exc.value) and FAKE_SECRET not in str(exc.value)


def test_a_bad_cafile_is_a_failure_not_an_exception(tls, tmp_path):
    cfg = config(smtp_mapping(free_port(), None) | {"cafile": str(tmp_path / "missing.pem")})
    (failure,) = Notifier(cfg, PASSWORD, Log()).send(events())
    assert "missing.pem: cannot be read" in failure
