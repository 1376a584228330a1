"""Host reports: what each host of a credential serves, from the deploy or verify run that checked it."""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import Conflict
from .indexer import Indexer
from .store import HostReport, Hosts, Index, Store, iso


@dataclass(frozen=True)
class Checked:
    """One host's result for one credential, as a deploy or verify run found it."""

    in_sync: bool
    fingerprint_sha256: str = ""
    serial: str = ""
    drift: list = field(default_factory=list)

    @classmethod
    def from_result(cls, result: Mapping) -> "Checked":
        """From what the release module returned for the host (in_sync, fingerprint_sha256, serial, drift)."""
        return cls(bool(result.get("in_sync")), str(result.get("fingerprint_sha256") or ""),
                   str(result.get("serial") or ""), [str(d) for d in result.get("drift") or []])


class HostReports:
    def __init__(self, store: Store, index: Indexer):
        self.store = store
        self.index = index

    def record(self, mzp: str, app: str, checked: Mapping[str, Checked], all_hosts: set[str],
               now: dt.datetime) -> Index:
        """Remember what each host serves and refresh the index's counts.

        `checked` holds the hosts checked in this run; hosts not checked keep their last report;
        hosts no longer in the inventory (`all_hosts`) are forgotten; hosts never checked are
        recorded as missing.
        """
        for _ in range(5):
            found = self.store.hosts(mzp, app)
            seen = {h: r for h, r in (found.record.hosts if found else {}).items() if h in all_hosts}
            for host in all_hosts - set(seen) - set(checked):
                seen[host] = HostReport(in_sync=False, drift=["missing: never checked"])
            for host, c in checked.items():
                seen[host] = HostReport(in_sync=c.in_sync, fingerprint_sha256=c.fingerprint_sha256, serial=c.serial,
                                        drift=list(c.drift), checked_at=iso(now))
            try:
                self.store.put_hosts(mzp, app, Hosts(hosts=seen, checked_at=iso(now)),
                                     cas=found.version if found else 0)
                break
            except Conflict:
                continue  # another run reported at the same time: merge again
        return self.index.reindex(mzp, app, now, pending_from_index=True)
