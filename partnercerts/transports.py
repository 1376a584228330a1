"""How a pending CSR reaches the authority: one small protocol, one class per submission method.

`sandbox` signs at once with the local sandbox authority and imports the certificate; `email`
sends the request over SMTP; `outbox` leaves a ready-to-send message for a human. A new way
(a ticketing API, a web form robot) is one more class in `TRANSPORTS`.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol

from .errors import Remedy, UserError
from .inventory import Partner
from .store import Pending, Store, iso

if TYPE_CHECKING:
    from .importer import Importer, ImportResult
    from .mail import SmtpConfig
    from .passwords import Passwords
    from .sandbox import Authority
    from .settings import Settings


@dataclass(frozen=True)
class Request:
    """One CSR to deliver: the partner, the application, its pending record and, for messages, the e-mail."""

    partner: Partner
    app: str
    pending: Pending
    now: dt.datetime
    message_id: str = ""
    message: EmailMessage | None = None


@dataclass(frozen=True)
class Delivery:
    where: str                              # "e-mailed to ...", for the outcome line
    imported: "ImportResult | None" = None  # set when the authority answered at once (sandbox)


class Transport(Protocol):
    method: str
    sends_message: bool  # a message with a Message-ID, recorded before it is sent (never twice unless resent)

    def check(self, partner: Partner) -> None:
        """Refuse, before anything is written, what would make the delivery fail (e.g. a missing password)."""

    def deliver(self, request: Request) -> Delivery:
        """Deliver the request; raise an Error when it did not leave."""


class SandboxTransport:
    method = "sandbox"
    sends_message = False

    def __init__(self, settings: "Settings", store: Store, importer: "Importer", passwords: "Passwords"):
        self.settings, self.store, self.importer, self.passwords = settings, store, importer, passwords
        self._authority: Authority | None = None

    @property
    def authority(self) -> Authority:
        if self._authority is None:
            from .sandbox import Authority
            self._authority = Authority(self.store, self.settings.sandbox_validity_days)
        return self._authority

    def check(self, partner: Partner) -> None:
        return None

    def deliver(self, request: Request) -> Delivery:
        from . import csr as csrmod
        from .importer import Source
        mzp, app, now = request.partner.mzp, request.app, request.now
        if self.store.account(mzp) is None:
            # Like PSA handing out the MZP password: the sandbox makes one up once.
            self.passwords.set_account(mzp, secrets.token_urlsafe(18), now)
        cur = self.store.current(mzp, app)
        client_id = cur.record.client_id if cur else self.authority.new_client_id()
        cert_pem = self.authority.sign(csrmod.from_pem(request.pending.csr_pem), now)
        result = self.importer.import_cert(mzp, app, Source(cert_pem.encode(), "sandbox authority"), now,
                                           ca=Source(self.authority.ca_pem(now).encode(), "sandbox CA"),
                                           client_id=client_id, submission="sandbox", submitted_at=iso(now))
        return Delivery("signed by the sandbox authority", imported=result)


class EmailTransport:
    method = "email"
    sends_message = True

    def __init__(self, store: Store):
        self.store = store

    def _password(self, partner: Partner) -> str | None:
        found = self.store.smtp(partner.mzp)
        return found.record.password if found and found.record.password else None

    @staticmethod
    def _smtp(partner: Partner) -> SmtpConfig:
        smtp = partner.submission.smtp
        assert smtp is not None  # an `email` submission always has one (inventory._submission)
        return smtp

    def check(self, partner: Partner) -> None:
        if self._smtp(partner).user and not self._password(partner):
            raise UserError(f"{partner.mzp}: no SMTP password in Vault for {self._smtp(partner).user}; store it",
                            remedy=Remedy.STORE_SMTP_PASSWORD, mzp=partner.mzp)

    def deliver(self, request: Request) -> Delivery:
        from .mail import send
        assert request.message is not None
        send(self._smtp(request.partner), request.message, self._password(request.partner))
        return Delivery(f"e-mailed to {request.partner.submission.to}")


class OutboxTransport:
    method = "outbox"
    sends_message = True

    def check(self, partner: Partner) -> None:
        return None

    def deliver(self, request: Request) -> Delivery:
        from . import submission
        assert request.message is not None
        partner, pend = request.partner, request.pending
        conf = partner.subject.openssl_config(pend.key_spec or "rsa2048")
        folder = submission.write_outbox(partner.submission.outbox_dir, partner, request.app, request.message,
                                         pend.csr_pem, conf, request.now)
        return Delivery(f"written to the outbox {folder} for a human to send to {partner.submission.to}")
