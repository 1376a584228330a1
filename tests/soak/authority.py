"""The simulated manual authority of the soak: test code, outside the product, that behaves like the PSA/Stellantis
certificate desk seen over years. It only ever sees what a partner sends it (the CSR e-mails the SMTP server
received, the messages an operator takes from the outbox) and answers by e-mail (delivered to the partner's real
reply mailbox) or with a reply file (`.eml`) the operator imports by hand.

What it does, drawn from one seeded `random.Random` so that a soak replays from its seed:
- a turnaround of 1 to 30 days (most within two weeks) with a long tail up to 40 days;
- sometimes it loses a request: no answer until the CSR is sent again (a resend after a reminder);
- sometimes it answers twice (the same certificate in a second message, days later);
- sometimes it refuses once (a reply with no certificate), and signs when the CSR is sent again;
- sometimes it rebuilds the subject from its own policy (C, O, OU, CN only, in its order; the e-mail address
  moved to the SAN), as real authorities do; one partner's desk always does;
- it changes its issuing CA now and then (a new intermediate under the same root), and its replies then carry
  the new chain.
It keeps every certificate it issued, so the soak can prove at the end that Vault still holds every key."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import math
import random
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.pki import CA

FATES = (("normal", 0.76), ("lost", 0.06), ("twice", 0.07), ("refuse", 0.05), ("rebuild", 0.06))
MAX_TURNAROUND_DAYS = 40
DESK = "pki@stellantis.example"


def spki_sha256(public_key) -> str:
    return hashlib.sha256(public_key.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Request:
    """One CSR as the authority's desk holds it: for whom, its key, when it first came, what will happen to it."""
    cred: tuple[str, str]
    key_sha256: str
    csr: x509.CertificateSigningRequest
    reply_to: str          # the Message-ID of the partner's CSR e-mail (our reply's In-Reply-To)
    received: dt.datetime  # when this request (the first or a resend) reached the desk
    first_received: dt.datetime
    fate: str
    due: dt.datetime
    validity_days: int
    email: bool            # answered by e-mail to the reply mailbox, else as a reply file for the operator
    done: bool = False
    resends: int = 0


@dataclass
class Answer:
    """What the desk sends on a day: a certificate (maybe a duplicate) or a refusal."""
    request: Request
    at: dt.datetime
    kind: str                       # "cert", "duplicate", "refusal"
    leaf: x509.Certificate | None = None
    chain: list[x509.Certificate] = field(default_factory=list)
    message: bytes = b""


class Authority:
    def __init__(self, rng: random.Random, start: dt.datetime, validity: dict[tuple[str, str], int],
                 mailbox_of: dict[str, str], rebuilds: set[str] = frozenset()):
        self.rng = rng
        self.validity = validity
        self.mailbox_of = mailbox_of     # MZP -> the reply mailbox address, for partners answered by e-mail
        self.rebuilds = set(rebuilds)    # MZPs whose subjects this desk always rebuilds
        self.root = CA("Stellantis Soak Root CA", now=start, days=3650 * 2, not_before=start - dt.timedelta(days=30))
        self.generation = 0
        self.intermediate = self._new_intermediate(start)
        self.open: dict[str, Request] = {}          # key SHA-256 -> the request waiting on the desk
        self.later: list[Answer] = []               # duplicates to send on a later day
        self.issued: list[tuple[Request, x509.Certificate, list[x509.Certificate], dt.datetime]] = []
        self.delays: list[float] = []               # days from first receipt to the certificate, per request
        self.counts = {"requests": 0, "resends_seen": 0, "lost": 0, "twice": 0, "refused": 0, "rebuilt": 0,
                       "ca_changes": 0}

    # -- the CA ---------------------------------------------------------------------------------------------
    def _new_intermediate(self, now: dt.datetime) -> CA:
        self.generation += 1
        return CA(f"Stellantis Soak Issuing CA {self.generation}", issuer=self.root, now=now, days=3650,
                  not_before=now - dt.timedelta(days=1))

    def change_ca(self, now: dt.datetime) -> None:
        """A new intermediate from now on; certificates already issued stay valid under the old one."""
        self.intermediate = self._new_intermediate(now)
        self.counts["ca_changes"] += 1

    # -- requests -------------------------------------------------------------------------------------------
    def _turnaround(self) -> float:
        if self.rng.random() < 0.05:
            return self.rng.uniform(25, MAX_TURNAROUND_DAYS)
        return min(30.0, max(1.0, self.rng.lognormvariate(math.log(7), 0.6)))

    def _fate(self) -> str:
        x = self.rng.random()
        for fate, p in FATES:
            if x < p:
                return fate
            x -= p
        return "normal"

    def receive(self, cred: tuple[str, str], csr_pem: bytes, reply_to: str, at: dt.datetime, email_: bool) -> None:
        """A CSR reaches the desk (first sent, or sent again). A resend of a request still on the desk changes
        nothing, unless the desk had lost or refused it: then it is a new request, handled normally."""
        csr = x509.load_pem_x509_csr(csr_pem)
        digest = spki_sha256(csr.public_key())
        known = self.open.get(digest)
        if known is not None and not known.done:
            known.resends += 1
            self.counts["resends_seen"] += 1
            known.reply_to = reply_to
            if known.fate == "lost":  # found at last: a fresh turnaround from now
                known.fate, known.received = "normal", at
                known.due = at + dt.timedelta(days=self._turnaround())
            return
        if known is not None and known.fate == "refused":
            known.done = False
            known.fate, known.received, known.reply_to = "normal", at, reply_to
            known.due = at + dt.timedelta(days=self._turnaround())
            self.counts["resends_seen"] += 1
            return
        if known is not None:  # already signed: the same certificate again, soon
            self.counts["resends_seen"] += 1
            leaf, chain = next((c, ch) for r, c, ch, _ in self.issued if r is known)
            self.later.append(Answer(known, at + dt.timedelta(days=self.rng.uniform(0.5, 3)), "duplicate", leaf,
                                     chain))
            return
        fate = self._fate()
        self.counts["requests"] += 1
        due = at + dt.timedelta(days=self.rng.uniform(1, 5) if fate == "refuse" else self._turnaround())
        self.open[digest] = Request(cred, digest, csr, reply_to, at, at, fate, due, self.validity[cred], email_)
        if fate == "lost":
            self.counts["lost"] += 1

    def answers(self, upto: dt.datetime) -> list[Answer]:
        """Everything the desk sends up to `upto`, oldest first."""
        out = [a for a in self.later if a.at <= upto]
        self.later = [a for a in self.later if a.at > upto]
        for req in self.open.values():
            if req.done or req.fate in ("lost", "refused") or req.due > upto:
                continue
            if req.fate == "refuse":
                req.fate, req.done = "refused", True
                self.counts["refused"] += 1
                out.append(Answer(req, req.due, "refusal"))
                continue
            leaf, chain = self.sign(req, req.due)
            self.counts["rebuilt"] += leaf.subject != req.csr.subject
            req.done = True
            self.issued.append((req, leaf, chain, req.due))
            self.delays.append((req.due - req.first_received).total_seconds() / 86400)
            out.append(Answer(req, req.due, "cert", leaf, chain))
            if req.fate == "twice":
                self.counts["twice"] += 1
                self.later.append(Answer(req, req.due + dt.timedelta(days=self.rng.uniform(1, 6)), "duplicate",
                                         leaf, chain))
        out.sort(key=lambda a: a.at)
        for a in out:
            a.message = self._message(a)
        return out

    # -- signing and replies --------------------------------------------------------------------------------
    def _subject(self, req: Request) -> tuple[x509.Name, list[x509.GeneralName]]:
        asked = req.csr.subject
        if req.fate != "rebuild" and req.cred[0] not in self.rebuilds:
            return asked, []
        keep = [NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                NameOID.COMMON_NAME]
        attrs = [a for oid in keep for a in asked.get_attributes_for_oid(oid)]
        mails = [str(a.value) for a in asked.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
        return x509.Name(attrs), [x509.RFC822Name(m) for m in mails]

    def sign(self, req: Request, at: dt.datetime) -> tuple[x509.Certificate, list[x509.Certificate]]:
        subject, san = self._subject(req)
        ca = self.intermediate
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.name).public_key(req.csr.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(at - dt.timedelta(minutes=5)).not_valid_after(at + dt.timedelta(days=req.validity_days))
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca.key, hashes.SHA256()), [ca.cert, self.root.cert]

    def _message(self, a: Answer) -> bytes:
        req = a.request
        mzp, app = req.cred
        msg = EmailMessage()
        msg["From"] = f"Stellantis PKI <{DESK}>"
        msg["To"] = self.mailbox_of.get(mzp, f"pki@{mzp.lower()}.example")
        msg["Subject"] = f"RE: Certificate signing request {mzp} application {app}"
        msg["Date"] = format_datetime(a.at)
        msg["Message-ID"] = make_msgid(domain="stellantis.example")
        msg["In-Reply-To"] = req.reply_to
        msg["References"] = req.reply_to
        if a.kind == "refusal":
            msg.set_content(f"Bonjour,\n\nNous ne pouvons pas traiter la demande de {mzp} en l'état : le "
                            "formulaire de demande n'est pas joint.\nMerci de renvoyer la demande.\n\n"
                            "Cordialement,\nStellantis PKI\n")
        else:
            assert a.leaf is not None
            msg.set_content(f"Bonjour,\n\nVeuillez trouver ci-joint le certificat de {mzp} ({app}).\n"
                            f"Client ID : {self.client_id(req.cred)}\n\nCordialement,\nStellantis PKI\n")
            msg.add_attachment(pem(a.leaf), maintype="application", subtype="x-pem-file", filename=f"{mzp}.crt")
            msg.add_attachment(pem(*a.chain), maintype="application", subtype="x-pem-file",
                               filename="stellantis-ca.crt")
        return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    @staticmethod
    def client_id(cred: tuple[str, str]) -> str:
        """The Client ID of an application: it never changes over the application's life."""
        return "cid-" + hashlib.sha256("/".join(cred).encode()).hexdigest()[:24]


def csr_of_message(raw: bytes) -> tuple[bytes, str]:
    """The CSR attached to a partner's CSR e-mail (or outbox .eml), and its Message-ID."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.iter_attachments():
        data = part.get_payload(decode=True)
        if data and b"CERTIFICATE REQUEST" in data:
            return data, str(msg["Message-ID"]).strip()
    raise AssertionError(f"no CSR attached to {msg['Subject']!r}")

