"""Sending one e-mail over SMTP: STARTTLS or implicit TLS, always verified; clear text only to loopback.

Used for the CSR submission to the authority and for notifications. Every failure is one
`ServiceFailure` line naming the server and the cause (refused, timeout, TLS, authentication,
recipient); the password never appears in it.
"""
from __future__ import annotations

import base64
import email.utils
import ipaddress
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from .errors import Error, Remedy, ServiceFailure, UserError, names, shown

SECURITY = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
SMTP_KEYS = ("host", "port", "security", "user", "timeout", "cafile")
MAX_TIMEOUT = 600


def is_loopback(host: str) -> bool:
    """A loopback IP address literal, or the name `localhost` (RFC 6761: always loopback)."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _clear_refused(host: str, where: str) -> UserError:
    return UserError(f"{where}: security 'none' sends the password and the message (a CSR, a notification) "
                     f"in clear, so it is only allowed to a loopback address; {host!r} is not one: "
                     "use security starttls (port 587) or tls (port 465)")


def check_host(raw: dict, where: str, what: str) -> str:
    """The 'host' field of a server mapping (SMTP, IMAP): a name or an address, one word; `what` e.g. 'SMTP'."""
    host = raw.get("host")
    if not isinstance(host, str) or not host.strip() or len(host) > 253 or any(c.isspace() for c in host) \
            or "/" in host or "{{" in host:
        raise UserError(f"{where}: field 'host' is {shown(host)}; give the {what} server's name or address, "
                        f"e.g. {what.lower()}.example.com")
    return host.strip("[]")


def check_port(raw: dict, where: str, default: int, hint: str) -> int:
    port = raw.get("port", default)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UserError(f"{where}: field 'port' is {shown(port)}; use a port number from 1 to 65535 ({hint})")
    return port


def check_timeout(raw: dict, where: str) -> float:
    timeout = raw.get("timeout", 30)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT:
        raise UserError(f"{where}: field 'timeout' is {shown(timeout)}; use seconds from 1 to {MAX_TIMEOUT}")
    return float(timeout)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    security: str = "starttls"  # starttls | tls (implicit TLS, port 465) | none (loopback only)
    user: str | None = None
    timeout: float = 30
    cafile: str | None = None  # CA the server's certificate must verify to; default the system CAs

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_mapping(cls, raw: object, where: str) -> "SmtpConfig":
        """Validate an inventory mapping {host, port, security, user, timeout, cafile}; errors name `where`."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: must be a mapping with host (port, security, user, cafile)")
        if "password" in raw:
            raise UserError(f"{where}: field 'password' is not allowed in the inventory; remove it and keep the "
                            "SMTP password in Vault", remedy=Remedy.STORE_SMTP_PASSWORD)
        unknown = set(raw) - set(SMTP_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {names(unknown)}; "
                            f"allowed: {', '.join(SMTP_KEYS)}")
        host = check_host(raw, where, "SMTP")
        security = raw.get("security", "starttls")
        if not isinstance(security, str) or security not in SECURITY:
            raise UserError(f"{where}: field 'security' is {shown(security)}; use one of {', '.join(SECURITY)} "
                            "(starttls on 587, tls = implicit TLS on 465, none only to a loopback address)")
        port = check_port(raw, where, DEFAULT_PORTS[security], "587 for starttls, 465 for tls")
        user = raw.get("user")
        if user is not None and (not isinstance(user, str) or not user or len(user) > 256
                                 or any(c in user for c in "\r\n\0")):
            raise UserError(f"{where}: field 'user' must be the SMTP login name (one line), or left out for no login")
        timeout = check_timeout(raw, where)
        cafile = raw.get("cafile")
        if cafile is not None and (not isinstance(cafile, str) or not cafile or "{{" in cafile):
            raise UserError(f"{where}: field 'cafile' must be the path of a PEM file with the CA that signed "
                            "the SMTP server's certificate")
        if security == "none" and not is_loopback(host):
            raise _clear_refused(host, where)
        return cls(host=host, port=port, security=security, user=user, timeout=timeout, cafile=cafile)


def _one_line(text: object, password: str | None, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(str(text).split())
    if password:
        text = text.replace(password, "***")
    return text[:limit] + ("..." if len(text) > limit else "")


def _tls_context(config: SmtpConfig) -> ssl.SSLContext:
    try:
        # Verifies the chain and the host name (CERT_REQUIRED, check_hostname); TLS 1.2 at least.
        ctx = ssl.create_default_context(cafile=config.cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise UserError(f"SMTP server {config.server}: cafile {config.cafile}: cannot be read as a PEM CA "
                        f"certificate ({reason}); fix the 'cafile' path") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    try:
        user.encode("ascii"), password.encode("ascii")
    except UnicodeEncodeError:
        # smtplib only sends ASCII; AUTH PLAIN is UTF-8 by definition (RFC 4616).
        if not smtp.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.") from None
        if "PLAIN" not in smtp.esmtp_features["auth"].upper().split():
            raise smtplib.SMTPException("a non-ASCII password needs AUTH PLAIN, "
                                        "which the server does not offer") from None
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode("ascii")
        code, resp = smtp.docmd("AUTH", "PLAIN " + token)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, resp) from None
        return
    smtp.login(user, password)


def _prepare(config: SmtpConfig, message: EmailMessage, password: str | None) -> str:
    """Refuse what cannot be sent safely, before connecting; set Message-ID and Date; return the Message-ID."""
    server = config.server
    if config.security not in SECURITY:
        raise UserError(f"SMTP server {server}: security {config.security!r} is not one of {', '.join(SECURITY)}")
    if config.security == "none" and not is_loopback(config.host):
        raise _clear_refused(config.host, f"SMTP server {server}")
    if config.user and not password:
        raise UserError(f"SMTP server {server}: user {config.user!r} is set but no password was given; "
                        "store it in Vault", remedy=Remedy.STORE_SMTP_PASSWORD)
    sender = email.utils.parseaddr(message.get("From") or "")[1]
    if not sender or not any(message.get_all(h) for h in ("To", "Cc", "Bcc")):
        raise UserError(f"SMTP server {server}: the message needs a From and at least one recipient")
    if message.get("Message-ID") is None:
        message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    if message.get("Date") is None:
        message["Date"] = email.utils.formatdate(usegmt=True)
    return str(message["Message-ID"])


def send(config: SmtpConfig, message: EmailMessage, password: str | None) -> str:
    """Send one message; returns its Message-ID (one is set when the message has none)."""
    message_id = _prepare(config, message, password)
    session = _Session(config, password)
    try:
        session.deliver(message)
    except Error:
        raise
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise session.fail(_why(exc, config, session.stage, password)) from None
    finally:
        session.close()
    return message_id


class _Session:
    """One SMTP conversation; `stage` says how far it got, for the message of a failure."""

    def __init__(self, config: SmtpConfig, password: str | None):
        self.config, self.password = config, password
        self.smtp: smtplib.SMTP | None = None
        self.stage = "connecting"

    def fail(self, cause: str) -> ServiceFailure:
        return ServiceFailure(f"SMTP server {self.config.server}: {_one_line(cause, self.password, 400)}")

    def deliver(self, message: EmailMessage) -> None:
        config = self.config
        ctx = _tls_context(config) if config.security != "none" else None
        smtp: smtplib.SMTP  # SMTP_SSL is one
        if config.security == "tls":
            self.smtp = smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=ctx)
        else:
            self.smtp = smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        self.stage = "greeting (EHLO)"
        smtp.ehlo()
        if config.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise self.fail("does not offer STARTTLS, so the message would travel in clear; refused "
                                "(if the server uses implicit TLS, set security: tls and port 465)")
            self.stage = "STARTTLS"
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if config.user:
            self.stage = "login"
            _login(smtp, config.user, self.password or "")
        self.stage = "sending"
        refused = smtp.send_message(message)
        if refused:
            rcpts = ", ".join(f"{r} ({c} {_one_line(m, self.password)})" for r, (c, m) in refused.items())
            raise self.fail(f"refused recipient(s) {rcpts}; the others got the message")
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # delivered already; a lost QUIT is no failure

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()


def _why(exc: Exception, config: SmtpConfig, stage: str, password: str | None) -> str:
    """What an SMTP, TLS or network failure means, and what to check (first match, most specific first)."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (f"authentication failed for user {config.user!r} ({exc.smtp_code} "
                f"{_one_line(exc.smtp_error, password)}); check the SMTP password stored in Vault")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"{exc} (the server offers no login on this connection; check 'security' and 'user')"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        rcpts = ", ".join(f"{r} ({c} {_one_line(m, password)})" for r, (c, m) in exc.recipients.items())
        return f"refused recipient(s) {rcpts}; check the 'to' address(es)"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return (f"refused sender {exc.sender} ({exc.smtp_code} {_one_line(exc.smtp_error, password)}); "
                "check the 'from' address, the server may only accept its user's own address")
    if isinstance(exc, smtplib.SMTPDataError):
        return f"refused the message ({exc.smtp_code} {_one_line(exc.smtp_error, password)})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):
            return f"no answer within {config.timeout:g} s while {stage} (timeout); check host, port and firewalls"
        return (f"closed the connection unexpectedly ({_one_line(exc, password) or 'no reason given'}); "
                f"check that port {config.port} speaks security {config.security}")
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"answered {exc.smtp_code} {_one_line(exc.smtp_error, password)}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = ("give 'cafile' (the CA that signed the server's certificate)" if config.cafile is None
                else f"the server's certificate does not verify to {config.cafile} for the name {config.host!r}")
        return f"TLS failure: certificate verify failed ({exc.verify_message or exc.reason}); {hint}"
    if isinstance(exc, ssl.SSLError):
        hint = ""
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
            hint = f" (is port {config.port} really security {config.security}? tls is implicit TLS, usually 465)"
        return f"TLS failure: {exc.reason or exc}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; check host, port and that the server runs"
    if isinstance(exc, TimeoutError):
        return f"no answer within {config.timeout:g} s while {stage} (timeout); check host, port and firewalls"
    if isinstance(exc, socket.gaierror):
        return f"host name not found ({exc.strerror}); check 'host'"
    if isinstance(exc, smtplib.SMTPException):
        return str(exc)
    return getattr(exc, "strerror", None) or exc.__class__.__name__
