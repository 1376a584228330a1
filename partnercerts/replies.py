"""The authority's replies, read from each partner's reply mailbox (IMAP) and taken in through the one gate.

Correlation never trusts the envelope: a reply belongs to a credential when the certificate it holds
(attached, pasted, or behind a link) is for that credential's pending key. `In-Reply-To`/`References`
naming the Message-ID our CSR e-mail was sent with, and the MZP or application named in the text, are
shown as hints only; sender and subject are never proof.

Nothing is lost or done twice. A message that imported (or whose certificate is already current) is
moved to the processed folder, never deleted. One that matched nothing, failed the gate or could not be
read stays where it is with a keyword naming why, and is reported by every run while it stays there.
Per folder, the UIDVALIDITY and the last UID settled are kept in Vault, written after the messages are
settled: a run killed between an import and its move finds the message again, sees its certificate
already current and moves it. A changed UIDVALIDITY means the folder was rebuilt: it is read again from
the start.
"""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import enum
import re
from dataclasses import dataclass, field

from .errors import Error, Remedy, UserError
from .importer import Importer, ImportResult
from .inventory import Inventory, Partner
from .passwords import Passwords
from .settings import Settings
from .store import MailboxState, Store, iso

KEYWORDS = {"unmatched": "$PartnercertsUnmatched", "refused": "$PartnercertsRefused",
            "unreadable": "$PartnercertsUnreadable", "needs_attention": "$PartnercertsAttention"}


class Outcome(str, enum.Enum):
    IMPORTED = "imported"                # through the gate, now current; moved to the processed folder
    ALREADY_CURRENT = "already_current"  # its certificate is already current (a second reply, a resumed run)
    WOULD_IMPORT = "would_import"        # --dry-run: the gate would accept it
    UNMATCHED = "unmatched"              # no certificate, or one for none of the pending keys: left, flagged
    REFUSED = "refused"                  # for a pending key, but the gate (or a download) refused it
    UNREADABLE = "unreadable"            # could not be fetched or parsed as an e-mail
    NEEDS_ATTENTION = "needs_attention"  # answers our CSR e-mail without a certificate: left, a human acts
    ANSWERED_EARLIER = "answered_earlier"  # no certificate, answers an earlier send of a CSR sent again since: moved

    @property
    def settled(self) -> bool:
        return self in (Outcome.IMPORTED, Outcome.ALREADY_CURRENT, Outcome.ANSWERED_EARLIER)


@dataclass
class Handled:
    """What one message is and what was done with it."""

    uid: int
    outcome: Outcome
    detail: str                                      # the import line, or the reason, one line
    subject: str = ""
    date: str = ""
    message_id: str = ""
    mzp: str = ""
    app: str = ""
    hints: list[str] = field(default_factory=list)   # how it was found: key match, In-Reply-To, names in the text
    imported: ImportResult | None = None

    @property
    def key(self) -> str:
        return f"{self.mzp}/{self.app}" if self.app else self.mzp

    def line(self, server: str) -> str:
        about = f"{self.date or 'no date'}, {self.subject[:80]!r}" if self.subject else (self.date or "no subject")
        what = {Outcome.IMPORTED: f"imported for {self.key}", Outcome.ALREADY_CURRENT:
                f"already current for {self.key}, moved", Outcome.WOULD_IMPORT: f"would import for {self.key}",
                Outcome.UNMATCHED: "matches no pending credential, left in place",
                Outcome.REFUSED: f"refused for {self.key}, left in place",
                Outcome.UNREADABLE: "cannot be read, left in place",
                Outcome.NEEDS_ATTENTION: f"the authority answered {self.key} without a certificate, left in place "
                                         "(needs attention)",
                Outcome.ANSWERED_EARLIER: f"answers an earlier send of the CSR of {self.key}, moved"}[self.outcome]
        hints = f" [{'; '.join(self.hints)}]" if self.hints else ""
        return f"{server} UID {self.uid} ({about}): {what}: {self.detail}{hints}"


@dataclass
class MailboxRun:
    mzp: str
    server: str
    handled: list[Handled] = field(default_factory=list)
    failure: Error | None = None  # the mailbox could not be read at all (down, login refused, no password)
    rescanned: bool = False       # UIDVALIDITY changed: the folder was read from the start


def _header(msg, name: str) -> str:
    try:
        return " ".join(str(msg.get(name, "") or "").split())
    except Exception:  # noqa: BLE001 - a malformed header is shown as missing, never a crash
        return ""


class Replies:
    def __init__(self, settings: Settings, inventory: Inventory, store: Store, importer: Importer,
                 passwords: Passwords):
        self.settings, self.inventory, self.store = settings, inventory, store
        self.importer, self.passwords = importer, passwords

    def configured(self, mzp: str | None = None) -> list[Partner]:
        return [p for p in self.inventory.partners if p.reply_mailbox is not None and mzp in (None, p.mzp)]

    def run(self, now: dt.datetime, mzp: str | None = None, dry_run: bool = False) -> list[MailboxRun]:
        """Read every configured reply mailbox (or that of `mzp`); a mailbox that fails is reported, not raised."""
        if mzp is not None:
            partner = self.inventory.partner(mzp)
            if partner.reply_mailbox is None:
                raise UserError(f"{partner.source}: partner {mzp} has no 'reply_mailbox'; add one to read the "
                                "authority's replies")
        self.store.check_mount()
        runs = []
        for partner in self.configured(mzp):
            cfg = partner.reply_mailbox
            assert cfg is not None
            run = MailboxRun(partner.mzp, cfg.server)
            try:
                self._mailbox(partner, run, now, dry_run)
            except Error as exc:
                run.failure = exc
            runs.append(run)
        return runs

    def _mailbox(self, partner: Partner, run: MailboxRun, now: dt.datetime, dry_run: bool) -> None:
        from .imap import Mailbox
        cfg = partner.reply_mailbox
        assert cfg is not None
        password = self.passwords.mailbox(partner.mzp)
        if password is None:
            raise UserError(f"{partner.mzp}: no password in Vault for the reply mailbox {cfg.server}; store it",
                            remedy=Remedy.STORE_MAILBOX_PASSWORD, mzp=partner.mzp)
        state = self.store.mailbox_state(partner.mzp)
        folders = dict(state.record.folders) if state else {}
        seen = folders.get(cfg.folder) or {}
        with Mailbox(cfg, password, partner.mzp) as box:
            uidvalidity = box.select(cfg.folder)  # a rebuilt folder (another UIDVALIDITY) is read from the start
            last = int(seen.get("last_uid", 0)) if int(seen.get("uidvalidity", -1)) == uidvalidity else 0
            run.rescanned = bool(seen) and int(seen.get("uidvalidity", -1)) != uidvalidity
            high = last
            for uid in box.uids(cfg.folder, last, tuple(KEYWORDS.values())):
                handled = self._one(box, partner, uid, now, dry_run)
                run.handled.append(handled)
                if not dry_run:
                    self._settle(box, cfg.processed_folder, handled)
                    if handled.outcome is Outcome.NEEDS_ATTENTION:
                        self._attention(handled, now)
                high = max(high, uid)
        if not dry_run:
            folders[cfg.folder] = {"uidvalidity": uidvalidity, "last_uid": high}
            left = {reason: sum(1 for h in run.handled if h.outcome.value == reason) for reason in KEYWORDS}
            self.store.put_mailbox_state(partner.mzp, MailboxState(folders=folders, checked_at=iso(now), left=left),
                                         cas=state.version if state else 0)

    def left(self) -> dict[str, dict[str, int]]:
        """Per partner with a reply mailbox, the messages its last read left in place, by reason."""
        from .errors import VaultDenied
        out = {}
        for partner in self.configured():
            try:
                state = self.store.mailbox_state(partner.mzp)
            except VaultDenied:  # the auditor reads metadata only: no such metric for it
                continue
            out[partner.mzp] = {r: int((state.record.left if state else {}).get(r, 0)) for r in KEYWORDS}
        return out

    def _attention(self, handled: Handled, now: dt.datetime) -> None:
        """Keep the authority's answer on the pending record (the key stays): status and the plan show it."""
        from dataclasses import replace
        pend = self.store.live_pending(handled.mzp, handled.app)
        if pend is None or pend.record.attention.get("message_id") == handled.message_id and handled.message_id:
            return
        note = {"subject": handled.subject[:200], "date": handled.date, "message_id": handled.message_id,
                "seen_at": iso(now)}
        self.store.put_pending(handled.mzp, handled.app, replace(pend.record, attention=note), cas=pend.version)
        self.importer.index.reindex(handled.mzp, handled.app, now)

    @staticmethod
    def _settle(box, processed: str, handled: Handled) -> None:
        if handled.outcome.settled:
            box.move(handled.uid, processed)
        else:
            box.flag(handled.uid, KEYWORDS[handled.outcome.value], clear=tuple(KEYWORDS.values()))

    def _one(self, box, partner: Partner, uid: int, now: dt.datetime, dry_run: bool) -> Handled:
        from . import certs, reply, sources
        limit = self.settings.max_eml_bytes
        try:
            raw, meta = box.fetch(uid, limit)
        except Error as exc:
            return Handled(uid, Outcome.UNREADABLE, str(exc), mzp=partner.mzp)
        if not raw:
            head = email.message_from_bytes(meta.get("headers") or b"", policy=email.policy.default)
            return Handled(uid, Outcome.UNREADABLE, f"{meta['size']} bytes, over the {limit}-byte limit "
                                                    "(PARTNERCERTS_MAX_EML_BYTES)", subject=_header(head, "Subject"),
                           date=_header(head, "Date"), message_id=_header(head, "Message-ID"), mzp=partner.mzp)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        got = Handled(uid, Outcome.UNMATCHED, "", subject=_header(msg, "Subject"), date=_header(msg, "Date"),
                      message_id=_header(msg, "Message-ID"), mzp=partner.mzp)
        name = f"{box.config.server} UID {uid}"
        pendings = {a.name: self.store.live_pending(partner.mzp, a.name) for a in partner.applications}
        got.hints = self._hints(partner, msg, raw, pendings)
        currents = {a.name: self.store.current(partner.mzp, a.name) for a in partner.applications}
        if got.message_id:  # imported from this very message already (its links may work only once)
            for app in partner.applications:
                cur = currents[app.name]
                if cur and cur.record.reply_message_id == got.message_id:
                    got.outcome, got.app = Outcome.ALREADY_CURRENT, app.name
                    got.detail = f"serial {cur.record.serial} is already current (imported from this message)"
                    return got
        try:
            found = reply.parse_eml(raw, max_bytes=limit, source=name)
        except UserError as exc:
            got.detail = str(exc).removeprefix(f"{name}: ")
            ours = self._answers(msg, partner, pendings)
            if ours is not None:  # a question, a refusal: not proof of anything, but a human must read it
                got.outcome, got.mzp, got.app = Outcome.NEEDS_ATTENTION, partner.mzp, ours
                got.detail = "no certificate in a reply to our CSR e-mail; read it, then import, resend or re-key"
            elif (earlier := self._answers(msg, partner, pendings, earlier=True)) is not None:
                # A human already acted on it: the CSR went out again since (a resend clears the attention).
                got.outcome, got.mzp, got.app = Outcome.ANSWERED_EARLIER, partner.mzp, earlier
                got.detail = ("no certificate, in reply to an earlier send of the CSR, which was sent again since "
                              "(the answer was read and acted on)")
            return got
        try:
            resolved = sources.from_reply(self.settings, found, name)
            bundle = certs.load_bundle(resolved.cert.data, resolved.cert.name, self.settings.max_input_bytes)
        except Error as exc:
            got.outcome, got.detail = Outcome.REFUSED, str(exc)
            return got
        key_hashes = {certs.key_sha256(c) for c in bundle}
        prints = {certs.fingerprint(c) for c in bundle}
        for app in partner.applications:
            pend = pendings[app.name]
            cur = currents[app.name]
            if cur and cur.record.fingerprint_sha256 in prints:
                got.outcome, got.mzp, got.app = Outcome.ALREADY_CURRENT, partner.mzp, app.name
                got.detail = f"serial {cur.record.serial} is already current"
                got.hints.insert(0, "its certificate is the current one")
                return got
            if pend and pend.record.key_sha256 in key_hashes:
                got.mzp, got.app = partner.mzp, app.name
                got.hints.insert(0, f"its certificate is for the pending key (SHA-256 {pend.record.key_sha256[:16]}…)")
                return self._import(got, resolved, now, dry_run)
        shown = ", ".join(sorted(h[:16] + "…" for h in key_hashes if h)) or "unreadable keys"
        got.detail = (f"its certificate is for none of the pending keys of {partner.mzp} (certificate key SHA-256 "
                      f"{shown}); if it is the authority's reply, import it by hand with import-cert --eml")
        return got

    def _import(self, got: Handled, resolved, now: dt.datetime, dry_run: bool) -> Handled:
        from .errors import GateRefusal
        try:
            result = self.importer.import_cert(got.mzp, got.app, resolved.cert, now, ca=resolved.ca,
                                               client_id=resolved.client_id, submission="email reply",
                                               dry_run=dry_run, reply_message_id=got.message_id)
        except (GateRefusal, UserError) as exc:
            got.outcome, got.detail = Outcome.REFUSED, str(exc)
            return got
        got.imported = result
        if result.already_current:
            got.outcome, got.detail = Outcome.ALREADY_CURRENT, f"serial {result.serial} is already current"
        else:
            got.outcome = Outcome.WOULD_IMPORT if dry_run else Outcome.IMPORTED
            got.detail = (f"serial {result.serial}, valid until {result.not_after}, Client ID {result.client_id}"
                          + (f"; warning: {'; '.join(result.warnings)}" if result.warnings else ""))
        return got

    @staticmethod
    def _answers(msg, partner: Partner, pendings: dict, earlier: bool = False) -> str | None:
        """The application whose CSR e-mail (its recorded Message-ID) this message replies to, if any; with
        `earlier`, whose CSR it replies to under the Message-ID of a send before the last one."""
        refs = _header(msg, "In-Reply-To") + " " + _header(msg, "References")
        for app, pend in pendings.items():
            if not pend:
                continue
            ids = [s.message_id for s in pend.record.sent[:-1]] if earlier else [pend.record.message_id]
            if any(i and i in refs for i in ids):
                return app
        return None

    @staticmethod
    def _hints(partner: Partner, msg, raw: bytes, pendings: dict) -> list[str]:
        """What points at a credential besides the key (never proof): our Message-ID, names in the text."""
        hints = []
        refs = _header(msg, "In-Reply-To") + " " + _header(msg, "References")
        for app, pend in pendings.items():
            if pend and pend.record.message_id and pend.record.message_id in refs:
                hints.append(f"replies to our CSR e-mail {pend.record.message_id} for {partner.mzp}/{app}")
        text = raw.decode("utf-8", errors="replace")
        if re.search(rf"\b{partner.mzp}\b", text):
            named = [a.name for a in partner.applications if re.search(rf"\b{re.escape(a.name)}\b", text)]
            hints.append(f"names {partner.mzp}" + (f" and {', '.join(named)}" if named else ""))
        return hints
