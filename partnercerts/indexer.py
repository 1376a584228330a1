"""The credential index (custom metadata of `current`): derived from the records, read by status and the plan."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

from .inventory import Application, Partner
from .pending import settle_if_imported
from .store import Hosts, Index, Issued, Pending, Store, Versioned, iso

# (index or None, whether it is stale), by "MZP/app"
Found = dict[str, tuple[Index | None, bool]]


# Vault keeps at most 512 characters in one custom-metadata value.
MAX_VALUE = 500


def bounded(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def notes_value(notes: list[str]) -> str:
    """Subject notes as one custom-metadata value: a JSON list, whole notes only, at most MAX_VALUE characters;
    when they do not fit, the last entry says how many more the certificate's record holds."""
    if not notes:
        return ""
    for keep in range(len(notes), -1, -1):
        shown = notes[:keep] + ([f"and {len(notes) - keep} more, in the certificate's record in Vault"]
                                if keep < len(notes) else [])
        text = json.dumps(shown, ensure_ascii=False)
        if len(text) <= MAX_VALUE:
            return text
    return json.dumps([f"{len(notes)} differences, in the certificate's record in Vault"])


def notes_of(value: str) -> list[str]:
    """The subject notes kept by `notes_value`."""
    if not value:
        return []
    try:
        found = json.loads(value)
    except ValueError:
        return [value]
    return [str(n) for n in found] if isinstance(found, list) else [str(found)]


def serials_value(serials: list[str]) -> str:
    """Serials as one custom-metadata value: comma-separated, whole serials only, the last that fit in MAX_VALUE."""
    out: list[str] = []
    for serial in reversed(serials):
        if len(",".join([serial, *out])) > MAX_VALUE:
            break
        out.insert(0, serial)
    return ",".join(out)


def index_of(cur: Issued | None, version: int, pend: Pending | None, hosts: Hosts | None, now: dt.datetime) -> Index:
    """The index a credential's records give (no Vault access: the records are passed in)."""
    from . import certs
    index = Index()
    if cur is not None:
        anchors = certs.from_pem(cur.ca_pem)
        index = Index(serial=cur.serial, not_before=cur.not_before, not_after=cur.not_after,
                      client_id=cur.client_id, fingerprint_sha256=cur.fingerprint_sha256,
                      key_sha256=cur.key_sha256,
                      ca_fingerprint_sha256=certs.fingerprint(anchors[0]) if anchors else "",
                      key_spec=cur.key_spec, current_version=str(version),
                      turnarounds=",".join(str(t) for t in cur.turnarounds),
                      subject_notes=notes_value(cur.subject_notes),
                      subject_accepted_by=bounded(str(cur.subject_change.get("accepted_by", ""))
                                                  if cur.subject_change else ""),
                      withdrawn_at=str(cur.withdrawn.get("at", "")) if cur.withdrawn else "",
                      withdrawn_by=bounded(str(cur.withdrawn.get("by", ""))) if cur.withdrawn else "",
                      known_serials=serials_value([str(s) for s in cur.known_serials]))
    if pend is not None:
        index.pending_since = pend.created_at
        index.pending_submitted_at = pend.submitted_at
        index.pending_submission = pend.submission
        index.pending_message_id = bounded(pend.message_id) if pend.submitted_at else ""
        index.pending_times_sent = str(len(pend.sent)) if pend.sent else ""
        index.pending_sent_at = pend.sent[-1].at if pend.sent else ""
        index.pending_reminded_at = pend.reminded_at
        index.pending_times_reminded = str(pend.times_reminded) if pend.times_reminded else ""
        if pend.attention:
            index.pending_attention = bounded(f"{pend.attention.get('date') or '?'}: "
                                              f"{pend.attention.get('subject') or '(no subject)'}")
        index.key_spec = index.key_spec or pend.key_spec
    if hosts is not None:
        index.hosts_total = str(len(hosts.hosts))
        # A withdrawn certificate is in sync on a host that serves nothing any more.
        served = "" if index.withdrawn_at else index.fingerprint_sha256
        index.hosts_in_sync = str(sum(1 for h in hosts.hosts.values()
                                      if h.in_sync and h.fingerprint_sha256 == served))
        index.hosts_checked_at = hosts.checked_at
        ahead = sum(1 for h in hosts.hosts.values()  # verify's drift, or the deploy the module refused
                    if any(str(d).removeprefix("failed: ").startswith("ahead:") for d in h.drift))
        index.hosts_ahead = str(ahead) if ahead else ""
    index.updated_at = iso(now)
    return index


class Indexer:
    def __init__(self, store: Store):
        self.store = store
        self.written: set[tuple[str, str]] = set()  # credentials whose index this run wrote

    def reindex(self, mzp: str, app: str, now: dt.datetime, pending_from_index: bool = False) -> Index:
        """Derive the index from the records themselves and write it (repairs a stale index).

        pending_from_index: for the deployer, whose policy may not read pending keys: the pending
        fields are carried over from the existing index, and only custom metadata is written
        (its policy may not change max_versions).
        """
        if not pending_from_index:
            self.store.upgrade_index(now)  # once: the index moves to its own folder (store.py, layout 2)
        cur = self.store.current(mzp, app)
        pend: Versioned[Pending] | None = None
        if not pending_from_index:
            pend = self.store.live_pending(mzp, app)
            if pend and settle_if_imported(self.store, mzp, app, pend, cur, now):
                # An import that died after writing `current` but before its tombstone: settled, or
                # the credential would wait for the authority forever and never be renewed.
                pend = None
        hosts = self.store.hosts(mzp, app)
        index = index_of(cur.record if cur else None, cur.version if cur else 0,
                         pend.record if pend else None, hosts.record if hosts else None, now)
        if pending_from_index:
            found = self.store.read_index(mzp, app)
            index.carry_pending(found[0] if found else Index())
        self.store.write_index(mzp, app, index, custom_only=pending_from_index)
        self.written.add((mzp, app))
        return index

    def indexes(self, pairs: Iterable[tuple[Partner, Application]], cached: Found | None = None) -> Found:
        """Index of each (partner, application), and whether it is stale; `cached` entries are reused."""
        out: Found = {}
        todo = []
        for partner, application in pairs:
            key = f"{partner.mzp}/{application.name}"
            if cached is not None and key in cached:
                out[key] = cached[key]
            else:
                out[key] = (None, False)  # keeps the inventory's order
                todo.append((partner.mzp, application.name))
        for (mzp, app), found in zip(todo, self.store.read_indexes(todo), strict=True):
            out[f"{mzp}/{app}"] = (found[0], found[0].current_version != str(found[1])) if found else (None, False)
        return out
