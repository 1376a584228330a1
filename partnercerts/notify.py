"""Notifications of the credential lifecycle: one e-mail per run and/or one JSON webhook call (with
requests, through the proxy the environment names unless the receiver is on loopback).

A notification failure never aborts a rotation: `Notifier.send` logs and returns failures, it
never raises. No secret ever goes out: an event carries its kind, MZP, application, one human
line and only the detail fields of DETAIL_FIELDS (strings that look like key material are
dropped too).
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

import requests

from . import mail, reply
from .errors import Error, UserError, names, shown
from .mail import SmtpConfig, is_loopback

# A plain address; display names are not needed for an operations mailbox.
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
NOTIFY_KEYS = ("email", "webhook", "events")
EMAIL_KEYS = ("to", "from", "smtp")
WEBHOOK_KEYS = ("url", "timeout", "cafile")
# The only detail fields that leave this process: none of them is secret.
DETAIL_FIELDS = frozenset({
    "serial", "previous_serial", "client_id", "fingerprint_sha256", "state", "action", "reason",
    "not_before", "not_after", "days_left", "renew_before_days", "pending_since", "pending_age_days",
    "submitted_at", "submission", "message_id", "turnaround_median_days",
    "hosts", "hosts_in_sync", "hosts_total", "failed_hosts", "error",
    "subject_notes", "subject_change", "subject_change_accepted_by",
    "mailbox", "uid", "reply_subject", "reply_date", "by", "revoke_serial", "withdrawn",
})
SECRET_MARKERS = ("-----BEGIN", "PRIVATE KEY")
MAX_TEXT = 1000
MAX_RESPONSE = 64 * 1024


class Kind(str, enum.Enum):
    CSR_SUBMITTED = "csr_submitted"
    CERTIFICATE_IMPORTED = "certificate_imported"
    DEPLOYED = "deployed"
    DEPLOY_FAILED = "deploy_failed"
    REMINDER = "reminder"                      # a submitted CSR still waits for the authority
    EXPIRING_UNRENEWED = "expiring_unrenewed"  # expiring, and nothing pending to replace it
    EXPIRED = "expired"
    REPLY_UNMATCHED = "reply_unmatched"        # a message in the reply mailbox matches no pending credential
    REPLY_REFUSED = "reply_refused"            # a reply for a pending key that the gate (or its download) refused
    NEEDS_ATTENTION = "needs_attention"        # the authority answered our CSR without a certificate
    REKEY = "rekey"                            # an emergency re-key: a new key, the old certificate to revoke
    ROTATION_FAILED = "rotation_failed"        # a credential's renewal failed, or the run could not be finished


def _iso(t: dt.datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()


def _text(value: object, limit: int = MAX_TEXT) -> str:
    """One line, bounded."""
    text = " ".join(str(value).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _looks_secret(value: str) -> bool:
    return any(m in value for m in SECRET_MARKERS)


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _clean_value(value: object) -> tuple[bool, object]:
    """(ok, value): scalars, flat lists of scalars, flat mappings of scalars; strings one line, no key material."""
    if isinstance(value, str):
        return (False, None) if _looks_secret(value) else (True, _text(value))
    if _scalar(value):
        return True, value
    if isinstance(value, (list, tuple)) and len(value) <= 1000 and all(_scalar(v) for v in value):
        if any(isinstance(v, str) and _looks_secret(v) for v in value):
            return False, None
        return True, [_text(v) if isinstance(v, str) else v for v in value]
    if isinstance(value, dict) and len(value) <= 1000 and all(_scalar(v) for v in value.values()):
        if any(_looks_secret(str(k)) or (isinstance(v, str) and _looks_secret(v)) for k, v in value.items()):
            return False, None
        return True, {_text(k, 200): (_text(v) if isinstance(v, str) else v) for k, v in value.items()}
    return False, None


@dataclass
class Event:
    kind: Kind
    mzp: str
    app: str
    message: str  # one human line
    details: dict  # non-secret fields only (DETAIL_FIELDS): serial, not_after, days_left, hosts, ...
    at: dt.datetime

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)

    def public(self) -> tuple[dict, list[str]]:
        """The event as it may leave this process, and the detail fields left out (names only)."""
        details, dropped = {}, []
        for key, value in (self.details or {}).items():
            ok, clean = _clean_value(value) if key in DETAIL_FIELDS else (False, None)
            if ok:
                details[key] = clean
            else:
                dropped.append(_text(key, 64))
        message = _text(self.message)
        if _looks_secret(message):
            message, dropped = "(message withheld: it looked like key material)", dropped + ["message"]
        return ({"kind": self.kind.value, "mzp": _text(self.mzp, 64), "app": _text(self.app, 64),
                 "message": message, "details": details, "at": _iso(self.at)}, dropped)


@dataclass(frozen=True)
class EmailConfig:
    to: tuple[str, ...]
    sender: str
    smtp: SmtpConfig


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: float = 10
    cafile: str | None = None  # CA the server's certificate must verify to; default the system CAs

    @property
    def display(self) -> str:
        """The URL without path and query, which may hold a token."""
        u = urllib.parse.urlsplit(self.url)
        return f"{u.scheme}://{u.netloc}" + ("/..." if u.path not in ("", "/") or u.query else "")


@dataclass(frozen=True)
class NotifyConfig:
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    events: frozenset = field(default_factory=lambda: frozenset(Kind))

    @classmethod
    def from_mapping(cls, raw: object, where: str) -> "NotifyConfig":
        """Validate `partnercerts_notify` {email: {to, from, smtp}, webhook: {url, timeout}, events: [...]}."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: must be a mapping with 'email' and/or 'webhook' (and optional 'events')")
        unknown = set(raw) - set(NOTIFY_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {names(unknown)}; "
                            f"allowed: {', '.join(NOTIFY_KEYS)}")
        email = _email(raw["email"], f"{where}: email") if raw.get("email") is not None else None
        webhook = _webhook(raw["webhook"], f"{where}: webhook") if raw.get("webhook") is not None else None
        if email is None and webhook is None:
            raise UserError(f"{where}: configure 'email' and/or 'webhook'")
        events = frozenset(Kind)
        if "events" in raw:
            kinds = raw["events"]
            if not isinstance(kinds, list) or not kinds:
                raise UserError(f"{where}: field 'events' must list event kinds ({', '.join(k.value for k in Kind)}); "
                                "leave it out for all")
            bad = [n for n in kinds if not isinstance(n, str) or n not in {k.value for k in Kind}]
            if bad:
                raise UserError(f"{where}: field 'events' has unknown kind(s) {', '.join(map(shown, bad[:5]))}; "
                                f"use {', '.join(k.value for k in Kind)}")
            events = frozenset(Kind(n) for n in kinds)
        return cls(email=email, webhook=webhook, events=events)


def _address(value: object, where: str, name: str) -> str:
    if not isinstance(value, str) or len(value) > 254 or not ADDRESS_RE.fullmatch(value):
        raise UserError(f"{where}: field '{name}' is {shown(value)}; "
                        "it must be a plain e-mail address, e.g. ops@example.com")
    return value


def _email(raw: object, where: str) -> EmailConfig:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping with to, from and smtp")
    unknown = set(raw) - set(EMAIL_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {names(unknown)}; allowed: {', '.join(EMAIL_KEYS)}")
    to = raw.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or len(to) > 50:
        raise UserError(f"{where}: field 'to' must list 1 to 50 e-mail addresses, e.g. [ops@example.com]")
    to = tuple(_address(a, where, "to") for a in to)
    sender = _address(raw.get("from"), where, "from")
    if not isinstance(raw.get("smtp"), dict):
        raise UserError(f"{where}: field 'smtp' must be a mapping with host (port, security, user, cafile)")
    return EmailConfig(to=to, sender=sender, smtp=SmtpConfig.from_mapping(raw["smtp"], f"{where}: smtp"))


def _webhook(raw: object, where: str) -> WebhookConfig:
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping with url (and optional timeout, cafile)")
    unknown = set(raw) - set(WEBHOOK_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {names(unknown)}; allowed: {', '.join(WEBHOOK_KEYS)}")
    url = raw.get("url")
    u, host = None, None
    if isinstance(url, str):
        try:
            u = urllib.parse.urlsplit(url)
            host = u.hostname
            _ = u.port  # a bad port raises ValueError
        except ValueError:
            u = None
    if u is None or not isinstance(url, str) or not host or u.scheme not in ("https", "http") \
            or any(c.isspace() for c in url) or "{{" in url:
        raise UserError(f"{where}: field 'url' must be an https:// URL, e.g. https://hooks.example.com/partnercerts")
    if u.username is not None or u.password is not None:
        raise UserError(f"{where}: field 'url' must not carry user:password@; use a token in the path if the "
                        "receiver needs one")
    if u.scheme == "http" and not is_loopback(host):
        raise UserError(f"{where}: field 'url' is plain http to {host}, which is not a loopback address; "
                        "use https (events would travel unprotected and unauthenticated)")
    timeout = raw.get("timeout", 10)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 300:
        raise UserError(f"{where}: field 'timeout' is {shown(timeout)}; use seconds from 1 to 300")
    cafile = raw.get("cafile")
    if cafile is not None and (not isinstance(cafile, str) or not cafile or "{{" in cafile):
        raise UserError(f"{where}: field 'cafile' must be the path of a PEM file with the CA of the webhook's server")
    return WebhookConfig(url=url, timeout=float(timeout), cafile=cafile)


def subject(events: list[Event]) -> str:
    """`partnercerts: 2 events (1 reminder, 1 expired)`, kinds in lifecycle order."""
    counts = [(k.value, sum(1 for e in events if e.kind == k)) for k in Kind]
    what = ", ".join(f"{n} {k}" for k, n in counts if n)
    return f"partnercerts: {len(events)} event{'s' if len(events) != 1 else ''} ({what})"


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return "-" if value is None or value == "" else str(value)


def body(public: list[dict]) -> str:
    lines = [f"partnercerts: {len(public)} event{'s' if len(public) != 1 else ''}", ""]
    for e in public:
        key = (f"{e['mzp']}/{e['app']}" if e["app"] else e["mzp"]) + ": " if e["mzp"] else ""
        lines.append(f"[{e['kind']}] {key}{e['message'].removeprefix(key)}")  # the message may start with the key
        lines.append(f"    at: {e['at']}")
        lines.extend(f"    {k}: {_show(v)}" for k, v in e["details"].items())
        lines.append("")
    lines.append(f"Sent by partnercerts on {socket.gethostname()}; its status command lists every credential.")
    return "\n".join(lines) + "\n"


class Notifier:
    def __init__(self, config: NotifyConfig | None, smtp_password: str | None, log: Callable[[str], None]):
        self.config = config
        self._password = smtp_password
        self.log = log

    def send(self, events: list[Event]) -> list[str]:
        """Notify every configured channel of the events its filter selects; returns failures, never raises."""
        if self.config is None:
            return []
        chosen = [e for e in events if e.kind in self.config.events]
        if not chosen:
            return []
        failures, public, kept = [], [], []
        for e in chosen:
            try:
                p, dropped = e.public()
            except Exception as exc:  # noqa: BLE001 - a malformed event is reported, the others still go out
                failures.append(f"notification: a {e.kind.value} event could not be rendered "
                                f"({type(exc).__name__}); left out")
                continue
            if dropped:
                self.log(f"notification: {e.kind.value} {p['mzp']}/{p['app']}: left out {', '.join(dropped)} "
                         "(not a known non-secret field, or it looked like key material)")
            public.append(p)
            kept.append(e)
        chosen = kept
        for channel, run in (("e-mail", self._email if self.config.email else None),
                             ("webhook", self._webhook if self.config.webhook else None)):
            if run is None or not chosen:
                continue
            try:
                self.log(run(chosen, public))
            except Error as exc:
                failures.append(f"notification {channel} failed: {self._scrub(str(exc))}")
            except Exception as exc:  # noqa: BLE001 - a notification must never abort a rotation
                failures.append(f"notification {channel} failed: unexpected {type(exc).__name__}: "
                                f"{self._scrub(_text(exc, 300))}")
        for line in failures:
            self.log(line)
        return failures

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _email(self, events: list[Event], public: list[dict]) -> str:
        cfg = self.config.email if self.config else None
        assert cfg is not None  # only called when e-mail is configured
        msg = EmailMessage()
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.to)
        msg["Subject"] = subject(events)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
        msg.set_content(body(public))
        message_id = mail.send(cfg.smtp, msg, self._password)
        return f"notification e-mail sent to {', '.join(cfg.to)} ({len(events)} event(s), Message-ID {message_id})"

    def _webhook(self, events: list[Event], public: list[dict]) -> str:
        """POST the events as JSON: redirects never followed; the proxy of the environment (HTTPS_PROXY,
        NO_PROXY, as requests reads them), never for a loopback host; plain http to loopback only."""
        cfg = self.config.webhook if self.config else None
        assert cfg is not None  # only called when a webhook is configured
        where = f"webhook {cfg.display}"
        payload = json.dumps({"source": "partnercerts", "events": public}, ensure_ascii=False).encode()
        u = urllib.parse.urlsplit(cfg.url)
        if u.scheme != "https" and not is_loopback(u.hostname or ""):
            raise UserError(f"{where}: plain http is only allowed to a loopback address; use https")
        try:  # the cafile only matters for https (plain http is loopback only)
            ctx = ssl.create_default_context(cafile=cfg.cafile if u.scheme == "https" else None)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"{where}: cafile {cfg.cafile}: cannot be read as a PEM CA certificate "
                            f"({getattr(exc, 'strerror', None) or exc})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        snippet = ""
        with reply.http_session(ctx) as session:
            proxy = reply.proxy_for(session, cfg.url)  # None for loopback: never sent to a proxy
            try:
                with session.post(cfg.url, data=payload, headers={"Content-Type": "application/json"},
                                  timeout=cfg.timeout, allow_redirects=False, stream=True,
                                  proxies=reply.proxies(proxy)) as resp:
                    status = resp.status_code
                    if 200 <= status < 300:
                        resp.raw.read(MAX_RESPONSE)
                    else:
                        snippet = _text(resp.raw.read(512).decode("utf-8", errors="replace"), 120)
            except Exception as exc:  # noqa: BLE001 - requests', urllib3's and the socket's, worded below
                raise UserError(f"{where}: {_failure(exc, cfg, proxy, u)}") from None
        if not 200 <= status < 300:
            extra = " (redirects are not followed; give the final URL)" if 300 <= status < 400 else ""
            raise UserError(f"{where}: answered {status} {_text(resp.reason or '', 80)}{extra}"
                            + (f": {snippet}" if snippet else ""))
        return f"notification webhook {cfg.display} answered {status} ({len(events)} event(s))"


def _failure(exc: BaseException, cfg: WebhookConfig, proxy: str | None, u: urllib.parse.SplitResult) -> str:
    """What went wrong sending to the webhook, one line: the proxy, TLS, the connection or a timeout."""
    host = u.hostname or ""
    where = f"{f'[{host}]' if ':' in host else host}:{u.port or (443 if u.scheme == 'https' else 80)}"
    about_proxy = reply.proxy_problem(exc, proxy, where)
    if about_proxy:
        return about_proxy
    if reply.timed_out(exc):
        return _reason(TimeoutError(), cfg)
    for kind in (ssl.SSLCertVerificationError, ssl.SSLError, ConnectionRefusedError, socket.gaierror):
        found = reply.first(exc, kind)
        if found:
            return _reason(found, cfg)
    found = reply.first(exc, OSError)
    if found is not None and not isinstance(found, requests.RequestException) and found.strerror:
        return _reason(found, cfg)
    return f"{type(exc).__name__} {_text(exc, 200)}"


def _reason(reason: object, cfg: WebhookConfig) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        hint = "give 'cafile' (the CA of the webhook's server)" if cfg.cafile is None else \
            f"the server's certificate does not verify to {cfg.cafile}"
        return f"TLS failure: certificate verify failed ({reason.verify_message or reason.reason}); {hint}"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failure: {reason.reason or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {cfg.timeout:g} s (timeout)"
    if isinstance(reason, socket.gaierror):
        return f"host name not found ({reason.strerror})"
    if isinstance(reason, OSError):
        return reason.strerror or type(reason).__name__
    return _text(reason, 200)
