"""The authority's reply: download a certificate link over HTTPS, or read a saved reply e-mail (.eml).

The manual authority answers a CSR with an e-mail holding a link to the certificate, a link to the
CA certificate and the Client ID (sometimes the certificates are attached instead). `parse_eml`
finds these in the e-mail, `fetch` downloads a link (with requests, through the proxy the
environment names: HTTPS_PROXY, NO_PROXY; `http_session` and `proxy_for` are shared with the
webhook of `notify`). Neither checks the certificate itself: that is the import gate's job
(`certs.load_bundle` / `certs.gate`).

Nothing printed here ever holds a query string (download links carry one-time tokens in it) or a
user name and password from a URL: every URL in a message goes through `shown_url`, every proxy
through `shown_proxy` (host and port only).
"""
from __future__ import annotations

import contextlib
import hashlib
import http
import http.client
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import TypeVar, overload
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import requests.utils
import urllib3.exceptions
from cryptography import x509

from . import certs
from .errors import Error, ServiceFailure, UserError
from .mail import is_loopback

MAX_REDIRECTS = 3
CHUNK = 64 * 1024
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
EXPIRED_STATUSES = {403, 404, 410}
USER_AGENT = "partnercerts"
MAX_NESTING = 16  # MIME levels: a reply forwarded a few times is far below
LOOK_BACK = 3  # lines above a link alone on its line that may hold its label
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


# ---------------------------------------------------------------- URLs


def shown_url(url: str) -> str:
    """The URL as it may be printed: without user name/password, query string or fragment."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        text = f"{scheme}://{authority.rpartition('@')[2]}{rest[len(authority):]}"
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    text = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in text)
    return text if len(text) <= 200 else text[:200] + "…"


def host_allowed(host: str, patterns: list[str]) -> bool:
    """True if host equals a pattern, or is under `domain` for a pattern `*.domain` (not domain itself)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.strip().lower().rstrip(".").strip("[]")
        if p.startswith("*.") and len(p) > 2:
            if host.endswith(p[1:]) and len(host) > len(p) - 1:
                return True
        elif p and host == p:
            return True
    return False


@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int

    @property
    def shown(self) -> str:
        return shown_url(self.url)


def _check_url(url: str, allowed_hosts: list[str] | None, origin: str | None = None) -> _Target:
    """Refuse a URL that is not https://, not well formed, or not on the allowed hosts; before any connection."""
    lead = f"{shown_url(origin)}: redirected to {shown_url(url)}" if origin else shown_url(url)
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UserError(f"{lead}: not a valid URL (it holds spaces or control characters); copy the link exactly "
                        "as the authority sent it")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise UserError(f"{lead}: not a valid URL; copy the link exactly as the authority sent it") from None
    if parts.scheme.lower() != "https":
        raise UserError(f"{lead}: not an https:// link, so the certificate could be altered on the way; ask the "
                        "authority for an https:// link, or download the file yourself and give --cert")
    host = (parts.hostname or "").rstrip(".")
    if not _HOST_RE.fullmatch(host):
        raise UserError(f"{lead}: no valid host name in the link; copy the link exactly as the authority sent it")
    if parts.username is not None or parts.password is not None:
        raise UserError(f"{lead}: links with a user name or password are not accepted; give the plain download link")
    if allowed_hosts is not None and not host_allowed(host, allowed_hosts):
        listed = ", ".join(allowed_hosts) or "none"
        raise UserError(f"{lead}: host {host} is not one of the allowed download hosts ({listed}); check the link "
                        "really comes from the authority, then add its host to the allowed hosts")
    return _Target(url=url, host=host, port=port)


# ---------------------------------------------------------------- fetch


def fetch(url: str, *, max_bytes: int, allowed_hosts: list[str] | None, cafile: str | None = None,
          timeout: float = 30) -> bytes:
    """Download a file over verified HTTPS; raise a one-line UserError for anything else.

    Rules: https:// only; the host must match `allowed_hosts` (exact names or `*.domain`) unless it
    is None (an empty list allows nothing); at most 3 redirects, each checked like the first URL
    before connecting; the server verified with the system CAs, or `cafile`; at most `max_bytes`;
    `timeout` seconds for the whole download, redirects included. A 200 answer is returned as it
    is (an HTML page instead of a certificate is for the certificate parser to refuse).

    The proxy comes from the environment as `requests` reads it (HTTPS_PROXY / https_proxy, ALL_PROXY,
    NO_PROXY / no_proxy), decided again for every hop; a loopback host is never sent to a proxy.
    Failures of the network, the proxy, TLS or the server are one-line ServiceFailures.
    """
    context = _tls_context(cafile)
    deadline = time.monotonic() + timeout
    target = _check_url(url, allowed_hosts)
    with http_session(context) as session:
        for hops in range(MAX_REDIRECTS + 1):
            proxy = proxy_for(session, target.url)
            with _explained(target, cafile, timeout, proxy):
                with _request(session, target, proxy, deadline) as resp:
                    if resp.status_code not in REDIRECT_STATUSES:
                        _check_status(resp, target)
                        return _read_capped(resp, max_bytes, deadline, target)
                    location = resp.headers.get("Location")
            if not location:
                raise UserError(f"{target.shown}: HTTP {resp.status_code} redirect without a Location; ask the "
                                "authority for a new link")
            if hops == MAX_REDIRECTS:
                raise UserError(f"{shown_url(url)}: more than {MAX_REDIRECTS} redirects; open the link in a browser, "
                                "download the file and give --cert")
            target = _check_url(urljoin(target.url, location.strip()), allowed_hosts, origin=target.url)
    raise AssertionError("unreachable")


def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """Certificate and host name verification on, with the system CAs or `cafile`."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise UserError(f"{cafile}: cannot load as a CA file ({why}); give a PEM file with the CA "
                        "certificate(s) that signed the download server's certificate") from None


class _NoNetrc(requests.auth.AuthBase):
    """No authentication: with trust_env, requests would otherwise send ~/.netrc credentials to the host."""

    def __call__(self, r):
        return r


class _VerifiedAdapter(requests.adapters.HTTPAdapter):
    """TLS with exactly `context` (the system CAs, or a CA file) for every server, proxied or not: not
    requests' own CA bundle (certifi), not REQUESTS_CA_BUNDLE; never a retry."""

    def __init__(self, context: ssl.SSLContext):
        self._context = context
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED"}

    def cert_verify(self, conn, url, verify, cert):
        conn.cert_reqs = "CERT_REQUIRED"  # the context holds the trust anchors: no CA bundle on top of them
        conn.ca_certs = conn.ca_cert_dir = None


def http_session(context: ssl.SSLContext) -> requests.Session:
    """A requests Session that takes its proxies from the environment (trust_env), verifies every server
    with `context`, never retries and sends no ~/.netrc credentials. Close it (it is a context manager)."""
    session = requests.Session()
    session.trust_env = True
    session.auth = _NoNetrc()
    session.headers.clear()
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"})
    adapter = _VerifiedAdapter(context)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def proxy_for(session: requests.Session, url: str) -> str | None:
    """The proxy requests would take from the environment for `url` (NO_PROXY honoured); None for a loopback host."""
    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        return None
    settings = session.merge_environment_settings(url, {}, None, None, None)
    return requests.utils.select_proxy(url, settings["proxies"]) or None


def proxies(proxy: str | None) -> dict:
    """The `proxies` argument for one request: exactly `proxy`, or none at all (None entries cancel the
    environment's)."""
    return {"https": proxy, "http": proxy, "all": proxy}


def shown_proxy(proxy: str) -> str | None:
    """host:port of a proxy URL as requests reads it (http:// when it has no scheme), never its user or
    password; None when it is not a valid URL."""
    try:
        parts = urlsplit(requests.utils.prepend_scheme_if_needed(proxy, "http"))
        host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return None
    if not host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def causes(exc: BaseException):
    """`exc` and every exception inside it: causes, contexts, and the exceptions requests and urllib3 wrap
    (in their arguments or `reason`), each once, nearest first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


E = TypeVar("E", bound=BaseException)


def first(exc: BaseException, kind: type[E]) -> E | None:
    """The nearest exception of `kind` in `exc` (see `causes`)."""
    return next((e for e in causes(exc) if isinstance(e, kind)), None)


def timed_out(exc: BaseException) -> bool:
    """A timeout anywhere in `exc` (urllib3 files a refused or failed connection under its timeouts too: not one)."""
    return any(isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError, requests.Timeout))
               and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in causes(exc))


_TUNNEL_RE = re.compile(r"Tunnel connection failed: (\d{3})\s*(.*)", re.S)  # http.client's words


def proxy_problem(exc: BaseException, proxy: str | None, where: str) -> str | None:
    """What went wrong with the proxy, as the end of a one-line message; None if the proxy is not the problem."""
    if not proxy:
        return None
    fix = "check HTTPS_PROXY / NO_PROXY"
    shown = shown_proxy(proxy)
    if shown is None:
        return f"the proxy set in the environment is not a valid URL; {fix}"
    for e in causes(exc):
        m = _TUNNEL_RE.match(str(e)) if type(e) is OSError else None
        if m:
            status = int(m.group(1))
            reason = "".join(ch if ch.isprintable() else "?" for ch in m.group(2).strip())[:80]
            answer = f"it answered the CONNECT with {status}{' ' + reason if reason else ''}"
            if status >= 500:
                return (f"the proxy {shown} could not connect to {where} ({answer}); check the link and that the "
                        f"server is up, then {fix}")
            return f"the proxy {shown} refused to connect to {where} ({answer}); {fix}, or have the proxy allow {where}"
    if isinstance(exc, requests.exceptions.ProxyError):
        if first(exc, socket.gaierror):
            why = "cannot resolve its host name"
        elif first(exc, ConnectionRefusedError):
            why = "connection refused"
        elif timed_out(exc):
            why = "no answer in time"
        else:
            found = first(exc, OSError)
            why = (getattr(found, "strerror", None) if found else None) or "it failed"
        return f"cannot reach the proxy {shown} ({why}); {fix}"
    return None


def _request(session: requests.Session, target: _Target, proxy: str | None, deadline: float) -> requests.Response:
    """Send the GET and read the status line and headers (not the body), directly or through `proxy`."""
    left = _remaining(deadline)
    return session.get(target.url, allow_redirects=False, stream=True, timeout=(left, left), proxies=proxies(proxy))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline")
    return left


def _check_status(resp: requests.Response, target: _Target) -> None:
    if resp.status_code in EXPIRED_STATUSES:
        raise UserError(f"{target.shown}: HTTP {resp.status_code}: the download link has expired or was already "
                        "used; ask the authority for a new link")
    if not 200 <= resp.status_code < 300:
        try:
            phrase = " " + http.HTTPStatus(resp.status_code).phrase
        except ValueError:
            phrase = ""
        raise ServiceFailure(f"{target.shown}: the server answered HTTP {resp.status_code}{phrase}; try again later, "
                             "or download the file in a browser and give --cert")


def _over_limit(target: _Target, max_bytes: int) -> UserError:
    return UserError(f"{target.shown}: the download is over the limit of {max_bytes} bytes, so it is not a "
                     "certificate file (raise PARTNERCERTS_MAX_INPUT_BYTES only if it really is)")


def _read_capped(resp: requests.Response, max_bytes: int, deadline: float, target: _Target) -> bytes:
    """The body, refused as soon as it is announced or seen to be over max_bytes; the deadline holds throughout.

    Read with read1 (whatever has arrived, up to CHUNK), the socket's timeout set to what is left
    before each read: a buffered read (iter_content) would wait for a full chunk from a server that
    trickles, past the deadline."""
    length = (resp.headers.get("Content-Length") or "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise _over_limit(target, max_bytes)
    sock = getattr(resp.raw.connection, "sock", None)
    chunks: list[bytes] = []
    size = 0
    while True:
        left = _remaining(deadline)
        if sock is not None:
            sock.settimeout(left)
        chunk = resp.raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise _over_limit(target, max_bytes)
        chunks.append(chunk)


_NETWORK_ERRORS = (OSError, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException)


@contextlib.contextmanager
def _explained(target: _Target, cafile: str | None, timeout: float, proxy: str | None):
    """Turn network, proxy, DNS, TLS and timeout failures into one-line ServiceFailures naming the URL and what
    to check."""
    try:
        yield
    except _NETWORK_ERRORS as exc:
        raise _failure(exc, target, cafile, timeout, proxy) from None


def _failure(exc: BaseException, target: _Target, cafile: str | None, timeout: float,
             proxy: str | None) -> ServiceFailure:
    where = f"{target.host}:{target.port}"
    via = f" (through the proxy {shown_proxy(proxy)})" if proxy else ""  # proxy_problem: a valid one
    about_proxy = proxy_problem(exc, proxy, where)
    if about_proxy:
        return ServiceFailure(f"{target.shown}: {about_proxy}")
    verify = first(exc, ssl.SSLCertVerificationError)
    if verify:
        anchors = f"the CA file {cafile}" if cafile else "this machine's CA certificates"
        return ServiceFailure(f"{target.shown}: the server's TLS certificate does not verify against {anchors} "
                              f"({verify.verify_message or verify.reason}); check the link's host, and the CA "
                              "certificates used for downloads")
    if first(exc, socket.gaierror):
        return ServiceFailure(f"{target.shown}: cannot resolve host {target.host}; check the link and this "
                              "machine's DNS")
    if timed_out(exc):
        return ServiceFailure(f"{target.shown}: no complete answer within {timeout:g} s{via}; check the network "
                              f"path to {where} (proxy, firewall) and try again")
    tls = first(exc, ssl.SSLError)
    if tls:
        return ServiceFailure(f"{target.shown}: the TLS connection to {where} failed "
                              f"({tls.reason or type(tls).__name__}){via}; check the link and that the server "
                              "speaks HTTPS")
    if first(exc, ConnectionRefusedError):
        return ServiceFailure(f"{target.shown}: connection refused by {where}; check the link and that the server "
                              "is up")
    broken = (first(exc, http.client.HTTPException) or first(exc, urllib3.exceptions.ProtocolError)
              or first(exc, urllib3.exceptions.DecodeError))
    if broken:
        return ServiceFailure(f"{target.shown}: the server broke off its answer ({type(broken).__name__}); try "
                              "again, or download the file in a browser and give --cert")
    found = first(exc, OSError)
    why = getattr(found, "strerror", None) or type(exc).__name__
    return ServiceFailure(f"{target.shown}: cannot reach {where} ({why}){via}; check the link and the network")


# ---------------------------------------------------------------- reply e-mails


@dataclass
class Reply:
    """What the authority's reply holds. An attached certificate (`cert`) is preferred over `cert_url`
    when both are there; `problems` are one-line notes for the user (no Client ID, several CA links...)."""

    cert: bytes | None = None
    cert_url: str | None = None
    ca: bytes | None = None
    ca_url: str | None = None
    client_id: str | None = None
    problems: list[str] = field(default_factory=list)


CERT_SUFFIXES = (".crt", ".cer", ".pem", ".der", ".p7b", ".p7c")
CERT_TYPES = {"application/pkix-cert", "application/x-pkcs7-certificates", "application/x-pem-file"}
URL_RE = re.compile(r"https?://[^\s<>\"'`\[\]{}|\\^]+", re.I)
PEM_RE = re.compile(r"-----BEGIN (CERTIFICATE|PKCS7|CERTIFICATE CHAIN)-----[A-Za-z0-9+/=\s]*?-----END \1-----")
# "CA" / "AC" only in capitals in prose ("ca" is too common); the rest in any case, French and English.
CA_TEXT_RE = re.compile(r"\b(?:CA|AC)\b|(?i:\b(?:autorit|authorit|root|racine|chain|cha[îi]ne)\w*)")
CERT_TEXT_RE = re.compile(r"(?i:\b(?:certificat\w*|cert|crt)\b)")
DOWNLOAD_RE = re.compile(r"(?i:\b(?:download\w*|t[ée]l[ée]charg\w*)\b)")
CA_URL_WORDS = {"ca", "cacert", "cacerts", "rootca", "root", "chain", "ac", "racine", "authority", "autorite"}
CERT_URL_WORDS = {"cert", "certs", "certificate", "certificates", "certificat", "certificats", "crt", "cer", "pem",
                  "der", "p7b", "p7c", "download", "telecharger", "telechargement"}
DOWNLOAD_WORDS = {"download", "telecharger", "telechargement"}
_LABEL = (r"(?<![\w?&=/.%-])(?:client[ _-]?id|clientid|id(?:entifiant)?(?:\s+(?:du|de\s+l'|d'))?\s*client)"
          r"(?:[^\S\n]*\([^)\n]*\))?")
_VALUE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# The value on the label's line, or alone on the next line ("Client ID:\n  abc").
CLIENT_ID_RE = re.compile(
    rf"{_LABEL}[^\S\n]*(?:[:=]|\t)[^\S\n]*(?:[\"'«“][^\S\n]*)?"
    rf"(?:({_VALUE})(?![A-Za-z0-9._-])|\n[^\S\n]*(?:>[^\S\n]*)*({_VALUE})[^\S\n]*$)",
    re.I | re.M)


@dataclass(frozen=True)
class _Link:
    """One link in a body: its URL, where it sits (line, start/end column) and, in HTML, its anchor text."""

    url: str
    line: int
    start: int
    end: int
    label: str = ""


@dataclass
class _Body:
    kind: str  # "plain" or "html"
    lines: list[str]
    links: list[_Link]


@dataclass(frozen=True)
class _Piece:
    """A certificate candidate: an attachment or a PEM block pasted in a body."""

    name: str
    data: bytes


def parse_eml(data: bytes, *, max_bytes: int, source: str = "reply e-mail") -> Reply:
    """Find the certificate (attached, pasted, or its link), the CA (attached or link) and the Client ID.

    Refuses (UserError naming `source`): empty, not an e-mail, over `max_bytes`, no certificate at
    all, or several different certificates. Everything else missing is noted in `problems`.
    """
    try:
        bodies, pieces = _collect(_message(data, max_bytes, source))
    except RecursionError:
        raise UserError(f"{source}: MIME parts nested more than {MAX_NESTING} levels deep; this does not look "
                        "like the authority's reply; give --cert or --url explicitly") from None
    reply = Reply()
    _take_pieces(reply, pieces + _pem_blocks(bodies), max_bytes, source)
    _take_links(reply, _classified_links(bodies, reply.cert is not None), source)
    reply.client_id = _client_id(bodies, reply.problems)
    if reply.cert is None and reply.cert_url is None:
        only_ca = " (only a CA certificate was found)" if reply.ca is not None or reply.ca_url else ""
        raise UserError(f"{source}: no certificate{only_ca}: neither an attached certificate "
                        f"({', '.join(CERT_SUFFIXES)}) nor a certificate download link; check this is the "
                        "authority's reply, or give --cert or --url explicitly")
    return reply


def _message(data: bytes, max_bytes: int, source: str) -> EmailMessage:
    """Parse the bytes as an e-mail, refusing empty, oversized and non-e-mail input."""
    save = "save the authority's reply as an .eml file (in the mail client: Save as / Download message)"
    if not data.strip():
        raise UserError(f"{source}: empty file; {save}")
    if len(data) > max_bytes:
        raise UserError(f"{source}: over the limit of {max_bytes} bytes; save the reply without other attachments, "
                        "or give --cert or --url explicitly (raise PARTNERCERTS_MAX_INPUT_BYTES only if needed)")
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise UserError(f"{source}: an Outlook .msg file, not an e-mail in MIME (.eml) format; {save}")
    if b"\x00" in data[:8192]:
        raise UserError(f"{source}: not an e-mail (binary data); {save}")
    msg = BytesParser(policy=policy.default).parsebytes(data)
    known = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}
    if not known & {name.lower() for name in msg.keys()}:
        raise UserError(f"{source}: not an e-mail (no From, To, Subject, Date or Content-Type header); {save}")
    return msg


def _collect(msg: Message, depth: int = 0) -> tuple[list[_Body], list[_Piece]]:
    """The text bodies and certificate pieces of a message, forwarded messages included."""
    bodies: list[_Body] = []
    pieces: list[_Piece] = []
    _walk(msg, bodies, pieces, depth)
    return bodies, pieces


def _walk(part: Message, bodies: list[_Body], pieces: list[_Piece], depth: int) -> None:
    if depth > MAX_NESTING:
        raise RecursionError("MIME parts nested too deeply")
    if part.is_multipart():  # multipart/* and message/rfc822 (a forwarded reply)
        subs = [sub for sub in part.get_payload() if isinstance(sub, Message)]
        if part.get_content_type() == "multipart/alternative":
            choices = [_collect(sub, depth + 1) for sub in subs]
            pieces.extend(p for _, found in choices for p in found)
            bodies.extend(_pick_alternative([found for found, _ in choices]))
        else:
            for sub in subs:
                _walk(sub, bodies, pieces, depth + 1)
    elif _is_cert_part(part):
        pieces.append(_Piece(_part_name(part), _decoded(part)))
    elif part.get_content_type() in ("text/plain", "text/html") and part.get_content_disposition() != "attachment":
        bodies.append(_body(part))


def _pick_alternative(choices: list[list[_Body]]) -> list[_Body]:
    """Of equivalent versions (multipart/alternative): the plain text when it holds a link, else the last (richest)."""
    for found in choices:
        if any(b.kind == "plain" and b.links for b in found):
            return found
    return next((found for found in reversed(choices) if found), [])


def _is_cert_part(part: Message) -> bool:
    """An attached certificate by name or type; S/MIME signed or encrypted content is not one."""
    ctype = part.get_content_type()
    if ctype == "application/pkcs7-mime":
        header = part.get("Content-Type")
        smime = str(getattr(header, "params", {}).get("smime-type") or "certs-only")
        return smime.lower() == "certs-only"
    name = (part.get_filename() or "").lower().strip()
    return name.endswith(CERT_SUFFIXES) or ctype.startswith("application/x-x509-") or ctype in CERT_TYPES


def _part_name(part: Message) -> str:
    name = part.get_filename() or f"an attached {part.get_content_type()}"
    name = "".join(ch if ch.isprintable() else "?" for ch in name)
    return name if len(name) <= 80 else name[:80] + "…"


def _decoded(part: Message) -> bytes:
    """The payload of a leaf part with its transfer encoding undone; b"" when there is none."""
    payload = part.get_payload(decode=True)  # bytes or None for a part that is not multipart
    return payload if isinstance(payload, bytes) else b""


def _body(part: Message) -> _Body:
    """A text part decoded (transfer encoding and charset) into lines and links."""
    assert isinstance(part, EmailMessage)  # parsed with policy.default (_message): every part is one
    try:
        text = part.get_content()
    except (LookupError, UnicodeError):
        text = _decoded(part).decode("utf-8", "replace")
    if part.get_content_type() == "text/html":
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        return _Body("html", parser.lines, parser.anchors())
    lines = text.splitlines()
    return _Body("plain", lines, [link for i, line in enumerate(lines) for link in _urls_in(line, i)])


def _urls_in(line: str, index: int) -> list[_Link]:
    """The http(s) URLs written in a line of plain text, without trailing punctuation."""
    found = []
    for m in URL_RE.finditer(line):
        url = m.group(0).rstrip(".,;:!?'\"»>")
        if url.endswith(")") and "(" not in url:
            url = url.rstrip(")")
        found.append(_Link(url, index, m.start(), m.start() + len(url)))
    return found


class _HtmlText(HTMLParser):
    """HTML rendered as text lines (blocks and <br> break lines, cells are tab-separated), with every href."""

    BLOCKS = {"p", "div", "br", "li", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
              "pre", "hr", "section", "article", "header", "footer", "title", "dd", "dt", "center"}
    CELLS = {"td", "th"}
    HIDDEN = {"script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines = [""]
        self._links: list[_Link] = []
        self._open: tuple[str, int, int] | None = None  # href, line, column of an <a> being read
        self._label: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.lines.append("")
        elif tag in self.CELLS:
            self.lines[-1] += "\t"
        if tag == "a":
            self._close_anchor()
            href = dict(attrs).get("href")
            if href:
                self._open = ("".join(href.split()), len(self.lines) - 1, len(self.lines[-1]))
                self._label = []

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "a":
            self._close_anchor()
        elif tag in self.BLOCKS:
            self.lines.append("")

    def handle_data(self, data):
        if self._hidden:
            return
        text = re.sub(r"\s+", " ", data)
        self.lines[-1] += text
        if self._open:
            self._label.append(text)

    def _close_anchor(self):
        if self._open:
            href, line, col = self._open
            self._links.append(_Link(href, line, col, len(self.lines[line]), " ".join("".join(self._label).split())))
            self._open = None

    def anchors(self) -> list[_Link]:
        self._close_anchor()
        return self._links


# ------------------------------------------------ certificates attached or pasted


def _pem_blocks(bodies: list[_Body]) -> list[_Piece]:
    """PEM certificate (or PKCS#7) blocks pasted in a body, quote markers ("> ") removed."""
    pieces = []
    for body in bodies:
        text = "\n".join(re.sub(r"^[>\s]*", "", line) for line in body.lines)
        for m in PEM_RE.finditer(text):
            pieces.append(_Piece("a certificate in the message body", _clean_pem(m.group(1), m.group(0))))
    return pieces


def _clean_pem(label: str, block: str) -> bytes:
    """A PEM block as mail clients mangle it (HTML-collapsed or re-wrapped lines) rewritten in standard form."""
    b64 = "".join(block.split("-----")[2].split())
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode("ascii")


def _is_ca_cert(cert: x509.Certificate) -> bool:
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except (x509.ExtensionNotFound, ValueError):
        pass
    return cert.issuer == cert.subject


def _read_piece(piece: _Piece, max_bytes: int) -> list[x509.Certificate]:
    try:
        return certs.load_bundle(piece.data, piece.name, max_bytes)
    except Error:
        return []


def _take_pieces(reply: Reply, pieces: list[_Piece], max_bytes: int, source: str) -> None:
    """Attached or pasted certificates: a piece with a non-CA certificate is the certificate, the rest the CA."""
    leaves: dict[frozenset, _Piece] = {}
    cas: dict[str, x509.Certificate] = {}
    unreadable: list[_Piece] = []
    for piece in pieces:
        found = _read_piece(piece, max_bytes)
        non_ca = [c for c in found if not _is_ca_cert(c)]
        if non_ca:
            leaves.setdefault(frozenset(certs.fingerprint(c) for c in non_ca), piece)
        elif found:
            cas.update((certs.fingerprint(c), c) for c in found)
        else:
            unreadable.append(piece)
    if not leaves:
        _take_unreadable(unreadable, leaves, reply)
    elif unreadable:
        reply.problems.append(f"{_some(p.name for p in unreadable)}: not a readable certificate; ignored")
    if len(leaves) > 1:
        names = _some(p.name for p in leaves.values())
        raise UserError(f"{source}: {len(leaves)} different certificates are attached or pasted ({names}); "
                        "ambiguous: give --cert or --url explicitly")
    if leaves:
        reply.cert = next(iter(leaves.values())).data
    if cas:
        reply.ca = certs.to_pem(list(cas.values())).encode("ascii")


def _take_unreadable(unreadable: list[_Piece], leaves: dict, reply: Reply) -> None:
    """With no readable certificate, unreadable attachments still count (by name) so the gate says what is wrong."""
    for piece in unreadable:
        if CA_TEXT_RE.search(piece.name) or CA_URL_WORDS & _words(piece.name):
            reply.ca = reply.ca or piece.data
        else:
            leaves.setdefault(frozenset({hashlib.sha256(piece.data).hexdigest()}), piece)


# ------------------------------------------------ links


def _some(texts, limit: int = 3) -> str:
    """The first few of many names or links, for a message that must stay one short line."""
    items = list(texts)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _words(text: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", text.lower())) - {""}


def _unwrap(url: str) -> str:
    """The real link behind an Outlook "Safe Links" wrapper; any other URL unchanged."""
    try:
        parts = urlsplit(url)
        if (parts.hostname or "").endswith(".safelinks.protection.outlook.com"):
            inner = parse_qs(parts.query).get("url")
            if inner:
                return inner[0]
    except ValueError:
        pass
    return url


def _url_words(url: str) -> set[str]:
    """Words of a URL's path and query (not its host: 'ca.example.com' says nothing about the file)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    return _words(f"{parts.path} {parts.query}")


def _own_text(body: _Body, link: _Link, prev_end: int, next_start: int) -> str:
    """The text that names a link: its anchor text and the label before it on its line (back to the
    previous link; else the text after it), else the nearest line above with words (a link alone on
    its line under its label)."""
    line = body.lines[link.line]
    label = URL_RE.sub(" ", link.label)
    text = URL_RE.sub(" ", line[prev_end:link.start])
    if not re.search(r"\w", text):
        text = URL_RE.sub(" ", line[link.end:next_start])
    if re.search(r"\w", label + text):
        return f"{label} {text}"
    for previous in reversed(body.lines[max(0, link.line - LOOK_BACK):link.line]):
        words = URL_RE.sub(" ", previous)
        if re.search(r"\w", words):
            return words
    return ""


def _with_neighbours(body: _Body):
    """Each link of a body with the end of the link before it and the start of the link after it, on its line."""
    for i, link in enumerate(body.links):
        before = body.links[i - 1] if i > 0 else None
        after = body.links[i + 1] if i + 1 < len(body.links) else None
        prev_end = before.end if before and before.line == link.line and before.end <= link.start else 0
        next_start = after.start if after and after.line == link.line and after.start >= link.end else None
        yield link, prev_end, next_start


RANK = {None: 0, "download": 1, "cert": 2, "ca": 3}


def _kind(url_words: set[str], text: str) -> str | None:
    """'ca' when the URL or text names the CA; 'cert' when it names a certificate; 'download' when it only
    says download / télécharger; else None (not a certificate link)."""
    if CA_URL_WORDS & url_words or CA_TEXT_RE.search(text):
        return "ca"
    if (CERT_URL_WORDS - DOWNLOAD_WORDS) & url_words or CERT_TEXT_RE.search(text):
        return "cert"
    if DOWNLOAD_WORDS & url_words or DOWNLOAD_RE.search(text):
        return "download"
    return None


@overload
def _stronger(a: str, b: str | None) -> str: ...
@overload
def _stronger(a: str | None, b: str | None) -> str | None: ...
def _stronger(a: str | None, b: str | None) -> str | None:
    # None ranks below every kind: a kind and anything give a kind
    return a if RANK[a] >= RANK[b] else b


def _is_file_link(url: str) -> bool:
    """An http(s) URL with a path or a query: a home page ('https://www.stellantis.com/') is never the file."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and (parts.path.strip("/") != "" or bool(parts.query))


def _classified_links(bodies: list[_Body], have_cert: bool) -> dict[str, str]:
    """Every certificate-looking link: 'ca', 'cert' or 'download'. A URL called CA anywhere is the CA."""
    kinds: dict[str, str] = {}
    strong: dict[str, str | None] = {}
    for body in bodies:
        for link, prev_end, next_start in _with_neighbours(body):
            url = _unwrap(link.url)
            kind = _kind(_url_words(url), _own_text(body, link, prev_end, next_start)) if _is_file_link(url) else None
            if kind:
                kinds[url] = _stronger(kind, kinds.get(url))
                strong[url] = _stronger(_kind(_url_words(url), link.label), strong.get(url))
    if not have_cert and len(kinds) > 1 and set(kinds.values()) == {"ca"}:
        # Every link was called CA ("the certificate issued by our authority: ..."): decide on the
        # URLs and anchor texts alone.
        kinds = {url: "ca" if strong[url] == "ca" else "cert" for url in kinds}
    return kinds


def _take_links(reply: Reply, kinds: dict[str, str], source: str) -> None:
    """The certificate and CA links; several different certificate links are ambiguous (unless one is attached).

    Links that only say "download" count when no link says "certificate"."""
    cert_urls = [u for u, k in kinds.items() if k == "cert"] or [u for u, k in kinds.items() if k == "download"]
    ca_urls = [u for u, k in kinds.items() if k == "ca"]
    if len(cert_urls) > 1 and reply.cert is None:
        shown = _some(shown_url(u) for u in cert_urls)
        raise UserError(f"{source}: {len(cert_urls)} different certificate links ({shown}); ambiguous: "
                        "give --cert or --url explicitly")
    if len(cert_urls) == 1:
        reply.cert_url = cert_urls[0]
    elif cert_urls:
        reply.problems.append(f"{len(cert_urls)} certificate links besides the attached certificate; links ignored")
    if len(ca_urls) == 1:
        reply.ca_url = ca_urls[0]
    elif ca_urls and reply.ca is None:
        reply.problems.append(f"{len(ca_urls)} different CA certificate links "
                              f"({_some(shown_url(u) for u in ca_urls)}); none taken: give --ca explicitly")
    for what, url in (("certificate", reply.cert_url), ("CA certificate", reply.ca_url)):
        if url and not url.lower().startswith("https://"):
            reply.problems.append(f"the {what} link {shown_url(url)} is not https:// and will be refused; ask the "
                                  "authority for an https:// link")


# ------------------------------------------------ Client ID


def _client_id(bodies: list[_Body], problems: list[str]) -> str | None:
    """The Client ID written as 'Client ID: x', 'client_id=x', 'Identifiant client : x'...

    None if absent or several.
    """
    found: list[str] = []
    for body in bodies:
        for m in CLIENT_ID_RE.finditer("\n".join(body.lines)):
            value = (m.group(1) or m.group(2)).rstrip(".")
            if value and value not in found:
                found.append(value)
    if not found:
        problems.append("no Client ID found in the reply; give --client-id explicitly")
        return None
    if len(found) > 1:
        problems.append(f"several Client IDs in the reply ({_some(found)}); give --client-id explicitly")
        return None
    return found[0]


__all__ = ["Reply", "fetch", "host_allowed", "parse_eml", "shown_url", "MAX_REDIRECTS"]
