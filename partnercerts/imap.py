"""The partner's reply mailbox over IMAP (imapclient): its inventory block, and the few operations replies need.

TLS is always verified (implicit TLS on 993, or STARTTLS on 143); clear text only to a loopback address.
Messages are addressed by UID within a folder whose UIDVALIDITY the caller keeps. A message is never
deleted: it is moved (UID MOVE, or COPY + \\Deleted + UID EXPUNGE of that UID only where MOVE is missing)
or flagged with a keyword. Every failure is one `ServiceFailure` line naming the server and the cause;
the password never appears in it.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass

from .errors import Remedy, ServiceFailure, UserError, names, shown
from .mail import check_host, check_port, check_timeout, is_loopback

SECURITY = ("tls", "starttls", "none")
DEFAULT_PORTS = {"tls": 993, "starttls": 143, "none": 143}
KEYS = ("host", "port", "security", "user", "folder", "processed_folder", "cafile", "timeout")


def _text(raw: dict, key: str, where: str, default: str | None = None, limit: int = 256) -> str | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or any(c in value for c in "\r\n\0") \
            or "{{" in value:
        raise UserError(f"{where}: field '{key}' is {shown(value)}; give one line of text")
    return value


@dataclass(frozen=True)
class MailboxConfig:
    host: str
    user: str
    port: int = 993
    security: str = "tls"                 # tls (implicit, 993) | starttls (143) | none (loopback only)
    folder: str = "INBOX"
    processed_folder: str = "partnercerts/processed"   # '/' is the server's hierarchy delimiter
    cafile: str | None = None             # CA the server's certificate must verify to; default the system CAs
    timeout: float = 30

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"imap {self.user}@{host}:{self.port}"

    @classmethod
    def from_mapping(cls, raw: object, where: str) -> "MailboxConfig":
        """Validate the inventory's `reply_mailbox` mapping; errors name `where`."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: must be a mapping with host and user (port, security, folder, "
                            "processed_folder, cafile)")
        if "password" in raw:
            raise UserError(f"{where}: field 'password' is not allowed in the inventory; remove it and keep the "
                            "mailbox password in Vault", remedy=Remedy.STORE_MAILBOX_PASSWORD)
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {names(unknown)}; allowed: {', '.join(KEYS)}")
        host = check_host(raw, where, "IMAP")
        security = raw.get("security", "tls")
        if not isinstance(security, str) or security not in SECURITY:
            raise UserError(f"{where}: field 'security' is {shown(security)}; use one of {', '.join(SECURITY)} "
                            "(tls = implicit TLS on 993, starttls on 143, none only to a loopback address)")
        port = check_port(raw, where, DEFAULT_PORTS[security], "993 for tls, 143 for starttls")
        user = _text(raw, "user", where)
        if user is None:
            raise UserError(f"{where}: field 'user' is missing; give the mailbox login, e.g. pki@example.com")
        folder = _text(raw, "folder", where, "INBOX")
        processed = _text(raw, "processed_folder", where, "partnercerts/processed")
        assert folder is not None and processed is not None
        if folder == processed:
            raise UserError(f"{where}: 'processed_folder' must differ from 'folder' ({folder!r})")
        cafile = _text(raw, "cafile", where, None, limit=4096)
        timeout = check_timeout(raw, where)
        if security == "none" and not is_loopback(host):
            raise UserError(f"{where}: security 'none' sends the mailbox password in clear, so it is only allowed to "
                            f"a loopback address; {host!r} is not one: use security tls (993) or starttls (143)")
        return cls(host=host, user=user, port=port, security=security, folder=folder, processed_folder=processed,
                   cafile=cafile, timeout=timeout)


class Mailbox:
    """One logged-in IMAP session (a context manager). Methods raise ServiceFailure naming the server."""

    def __init__(self, config: MailboxConfig, password: str, mzp: str = ""):
        self.config = config
        self.mzp = mzp
        self._password = password
        self._client = None
        self._delimiter = "/"
        self._ensured: set[str] = set()  # folders known to exist this session: no LIST per moved message

    def __enter__(self) -> "Mailbox":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, what: str, exc: BaseException) -> ServiceFailure:
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text.replace(self._password, "***") if self._password else text
        return ServiceFailure(f"{self.config.server}: {what}: {text[:200]}")

    def _context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.config.cafile)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise UserError(f"{self.config.server}: cafile {self.config.cafile}: cannot be read as a PEM CA "
                            f"certificate ({reason}); fix the 'cafile' path") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def open(self) -> None:
        import imapclient
        from imapclient.exceptions import LoginError
        cfg = self.config
        try:
            ctx = self._context() if cfg.security != "none" else None
            client = imapclient.IMAPClient(cfg.host, port=cfg.port, ssl=cfg.security == "tls", ssl_context=ctx,
                                           timeout=cfg.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ServiceFailure(f"{cfg.server}: TLS failure: certificate verify failed "
                                 f"({exc.verify_message or exc.reason}); "
                                 + (f"the server's certificate does not verify to {cfg.cafile}" if cfg.cafile else
                                    "set 'cafile' to the CA of the server's certificate")) from None
        except (TimeoutError, OSError) as exc:
            raise self._fail("cannot connect", exc) from None
        try:
            if cfg.security == "starttls":
                client.starttls(ctx)
            client.login(cfg.user, self._password)
        except LoginError:
            client.shutdown()
            raise ServiceFailure(f"{cfg.server}: login refused; check the user and the password in Vault",
                                 remedy=Remedy.STORE_MAILBOX_PASSWORD, mzp=self.mzp) from None
        except Exception as exc:  # noqa: BLE001 - imaplib/ssl errors of every kind become one line
            try:
                client.shutdown()
            except Exception:  # noqa: BLE001
                pass
            raise self._fail("STARTTLS or login failed", exc) from None
        self._client = client
        try:
            self._delimiter = (client.namespace().personal or [("", "/")])[0][1] or "/"
        except Exception:  # noqa: BLE001 - NAMESPACE is optional: fall back to LIST's delimiter
            try:
                listed = client.list_folders(directory="", pattern="")
                self._delimiter = (listed[0][1].decode() if listed and listed[0][1] else "/")
            except Exception:  # noqa: BLE001
                self._delimiter = "/"

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.logout()
            except Exception:  # noqa: BLE001 - the session is over either way
                pass
            self._client = None

    @property
    def client(self):
        assert self._client is not None, "Mailbox used outside `with`"
        return self._client

    def server_name(self, folder: str) -> str:
        """A folder name of the inventory ('/'-separated) in the server's hierarchy delimiter."""
        return folder.replace("/", self._delimiter) if self._delimiter != "/" else folder

    def select(self, folder: str) -> int:
        """Select a folder (read-write: messages are moved and flagged); its UIDVALIDITY."""
        try:
            info = self.client.select_folder(self.server_name(folder))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot open folder {folder!r}", exc) from None
        return int(info.get(b"UIDVALIDITY", 0))

    def uids(self, folder: str, after_uid: int, keywords: tuple[str, ...] = ()) -> list[int]:
        """In the selected folder, sorted: the UIDs above `after_uid`, and those carrying any of `keywords`."""
        try:
            found = {u for u in self.client.search(["UID", f"{after_uid + 1}:*"]) if u > after_uid}
            for keyword in keywords:  # ("n:*" matches the last message even when its UID is below n)
                found |= set(self.client.search(["KEYWORD", keyword]))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot search folder {folder!r}", exc) from None
        return sorted(found)

    def fetch(self, uid: int, max_bytes: int) -> tuple[bytes, dict]:
        """The raw message and its facts: size, flags and the headers that name it (Subject, Date, Message-ID);
        over `max_bytes`, the body is not fetched (b"")."""
        fields = "BODY.PEEK[HEADER.FIELDS (SUBJECT DATE MESSAGE-ID)]"
        try:
            meta = self.client.fetch([uid], ["RFC822.SIZE", "FLAGS", fields]).get(uid)
            if meta is None:
                raise ServiceFailure(f"{self.config.server}: message UID {uid} is gone from the folder")
            size = int(meta.get(b"RFC822.SIZE", 0))
            headers = next((v for k, v in meta.items() if k.startswith(b"BODY[HEADER")), b"") or b""
            if size > max_bytes:
                return b"", {"size": size, "flags": meta.get(b"FLAGS", ()), "headers": headers}
            body = self.client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]", b"")
        except ServiceFailure:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot fetch message UID {uid}", exc) from None
        return body, {"size": size, "flags": meta.get(b"FLAGS", ())}

    def ensure_folder(self, folder: str) -> str:
        name = self.server_name(folder)
        if name in self._ensured:
            return name
        try:
            if not self.client.folder_exists(name):
                self.client.create_folder(name)
                try:
                    self.client.subscribe_folder(name)
                except Exception:  # noqa: BLE001 - subscription is a courtesy for mail clients
                    pass
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot create folder {folder!r}", exc) from None
        self._ensured.add(name)
        return name

    def move(self, uid: int, folder: str) -> None:
        """Move one message (the current folder is selected); never deletes it."""
        target = self.ensure_folder(folder)
        try:
            if self.client.has_capability("MOVE"):
                self.client.move([uid], target)
            else:
                self.client.copy([uid], target)
                self.client.add_flags([uid], [b"\\Deleted"])
                self.client.uid_expunge([uid])  # UIDPLUS: expunges this UID only
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot move message UID {uid} to {folder!r}", exc) from None

    def flag(self, uid: int, keyword: str, clear: tuple[str, ...] = ()) -> None:
        try:
            if clear:
                self.client.remove_flags([uid], [k.encode() for k in clear if k != keyword])
            self.client.add_flags([uid], [keyword.encode()])
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot flag message UID {uid}", exc) from None
