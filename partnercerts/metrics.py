"""Prometheus metrics for node_exporter's textfile collector: one gauge family per fact, per credential.

`render` turns status rows (planner.Row) into the text exposition format; `write_textfile`
puts it in place atomically, so the collector never reads half a file. Values only: no secret
is ever part of a row. The alerting rules and the dashboard built on these names are in monitoring/.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable

from .errors import UserError

PREFIX = "partnercerts_"
HELP = {
    "certificate_expiration_timestamp_seconds": "Not-after time of the current certificate, in Unix seconds.",
    "pending_age_seconds": "Seconds since the pending CSR was made; 0 when nothing is pending.",
    "hosts_in_sync": "Hosts serving the current certificate, as of the last deploy or verify.",
    "hosts_total": "Hosts that use the credential, as of the last deploy or verify.",
    "certificate_info": "The current certificate of a credential (serial, Client ID, state); always 1.",
    "last_run_timestamp_seconds": "Time the last rotation run ended, in Unix seconds.",
    "last_success_timestamp_seconds": "Time the last successful rotation run ended, in Unix seconds.",
    "replies_left": "Messages the last read of the reply mailbox left in place (unmatched, refused, unreadable).",
    "pending_stage": "Stage of the credential's CSR (created, submitted, waiting, reminded, needs_attention, "
                     "issued): 1 for the current one, 0 for the others.",
    "turnaround_median_seconds": "Median seconds from CSR submission to certificate import, over the last imports.",
    "pending_reminder_seconds": "The partner's pending_reminder_days in seconds: a CSR waiting longer is chased.",
    "deploy_window_seconds": "The partner's deploy_window_days in seconds: the time a new certificate needs to "
                             "reach every host.",
}

# lifecycle.Stage, in its order (tests/unit/test_metrics.py keeps them equal): a state set, so an alert or a
# panel can select one stage and a stage that is left shows 0 rather than a series that vanishes.
STAGES = ("created", "submitted", "waiting", "reminded", "needs_attention", "issued")


def escape_label(value: object) -> str:
    """A label value as the exposition format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: list[tuple[str, object]]) -> str:
    return "{" + ",".join(f'{k}="{escape_label("" if v is None else v)}"' for k, v in pairs) + "}"


def _parse(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _seconds(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp())


def render(rows: Iterable, *, now: dt.datetime, last_run: dt.datetime | None,
           last_success: dt.datetime | None, replies_left: dict[str, dict[str, int]] | None = None,
           partners: Iterable | None = None) -> str:
    """The exposition text: HELP and TYPE, then the samples of each family; families without samples left out.

    `partners` (inventory.Partner: mzp, pending_reminder_days, deploy_window_days), when given, adds the
    per-partner thresholds the alerting rules compare with; without them the rules use the defaults (7 days).
    """
    families: dict[str, list[str]] = {name: [] for name in HELP}
    seen = set()
    for row in rows:
        if (row.mzp, row.app) in seen:
            continue  # a duplicate sample would make the collector drop the whole file
        seen.add((row.mzp, row.app))
        ident = [("mzp", row.mzp), ("app", row.app)]
        labels = _labels(ident)
        not_after = _parse(row.not_after)
        if not_after is not None:
            families["certificate_expiration_timestamp_seconds"].append(f"{labels} {_seconds(not_after)}")
        if not row.pending_since:
            families["pending_age_seconds"].append(f"{labels} 0")
        else:
            since = _parse(row.pending_since)
            if since is not None:
                families["pending_age_seconds"].append(f"{labels} {max(0, int((now - since).total_seconds()))}")
        if row.hosts_in_sync is not None:
            families["hosts_in_sync"].append(f"{labels} {int(row.hosts_in_sync)}")
        if row.hosts_total is not None:
            families["hosts_total"].append(f"{labels} {int(row.hosts_total)}")
        info = ident + [("serial", row.serial), ("client_id", row.client_id), ("state", row.state)]
        families["certificate_info"].append(f"{_labels(info)} 1")
        stage = getattr(row, "pending_stage", "") or ""
        if stage:
            for name in STAGES if stage in STAGES else (*STAGES, stage):
                families["pending_stage"].append(f"{_labels(ident + [('stage', name)])} {int(name == stage)}")
        median = getattr(row, "turnaround_median_days", None)
        if median is not None:
            families["turnaround_median_seconds"].append(f"{labels} {int(round(float(median) * 86400))}")
    if last_run is not None:
        families["last_run_timestamp_seconds"].append(f" {_seconds(last_run)}")
    if last_success is not None:
        families["last_success_timestamp_seconds"].append(f" {_seconds(last_success)}")
    for mzp, counts in (replies_left or {}).items():
        for reason, count in counts.items():
            families["replies_left"].append(f"{_labels([('mzp', mzp), ('reason', reason)])} {int(count)}")
    partners_seen = set()
    for partner in partners or ():
        if partner.mzp in partners_seen:
            continue
        partners_seen.add(partner.mzp)
        labels = _labels([("mzp", partner.mzp)])
        families["pending_reminder_seconds"].append(f"{labels} {int(partner.pending_reminder_days) * 86400}")
        families["deploy_window_seconds"].append(f"{labels} {int(partner.deploy_window_days) * 86400}")
    out = []
    for name, samples in families.items():
        if not samples:
            continue
        full = PREFIX + name
        out.append(f"# HELP {full} {HELP[name]}")
        out.append(f"# TYPE {full} gauge")
        out.extend(full + s for s in samples)
    return "\n".join(out) + "\n" if out else ""


def mark_run(text: str, now: dt.datetime) -> str:
    """`text` (a textfile this module wrote) with the last run's time set to `now` and every other sample kept:
    what a run that could not read Vault can still say (it ran, and did not succeed)."""
    name = PREFIX + "last_run_timestamp_seconds"
    sample = f"{name} {_seconds(now)}"
    lines = [line for line in text.splitlines() if line]
    if any(line.split(" ")[0] == name for line in lines):
        return "\n".join(sample if line.split(" ")[0] == name else line for line in lines) + "\n"
    family = [f"# HELP {name} {HELP['last_run_timestamp_seconds']}", f"# TYPE {name} gauge", sample]
    return "\n".join(lines + family) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> None:
    """Replace `path` atomically (temporary file beside it, fsync, mode 0644, rename); creates nothing else.

    The temporary name starts with a dot and ends in .tmp, so the collector (which reads *.prom) never sees it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    data = text.encode("utf-8", errors="replace")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UserError(f"metrics textfile {path}: cannot write in {directory} ({exc.strerror}); "
                        "check partnercerts_metrics_textfile and that the directory exists") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserError(f"metrics textfile {path}: cannot write it ({exc.strerror}); "
                        "check partnercerts_metrics_textfile") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(dir_fd)
