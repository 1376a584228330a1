"""Partner definitions, read from the Ansible inventory's `partnercerts_partners` variable.

Partners live in `<inventory>/group_vars/all.yml` or any `<inventory>/group_vars/all/*.yml`
(the files Ansible itself loads for every host), so playbooks and tasks see one definition.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import UserError, names, shown
from .profile import Subject, check_app, check_email, check_key_spec, make_subject

if TYPE_CHECKING:
    from .imap import MailboxConfig
    from .mail import SmtpConfig
    from .notify import NotifyConfig

SUBMISSION_METHODS = ("sandbox", "outbox", "email")
SUBMISSION_KEYS = {"method", "to", "from", "dir", "smtp"}
VAR = "partnercerts_partners"
PARTNER_KEYS = {"mzp", "country", "state", "locality", "organization", "email", "applications",
                "submission", "renew_before_days", "pending_reminder_days", "deploy_window_days", "reply_mailbox"}
APP_KEYS = {"name", "key"}


@dataclass(frozen=True)
class Submission:
    """How a partner's CSRs reach the authority: `sandbox` signs at once, `outbox` leaves a ready-to-send
    e-mail in a directory for a human, `email` sends it over SMTP (password in Vault)."""

    method: str = "sandbox"
    to: str = ""
    sender: str = ""
    outbox_dir: str = ""
    smtp: SmtpConfig | None = None  # for `email`


@dataclass(frozen=True)
class Application:
    name: str
    key_spec: str


@dataclass(frozen=True)
class Partner:
    subject: Subject
    applications: tuple[Application, ...]
    submission: Submission = Submission()
    renew_before_days: int = 60
    pending_reminder_days: int = 7
    deploy_window_days: int = 7
    source: str = ""
    reply_mailbox: MailboxConfig | None = None  # where the authority's replies land, read by `replies`

    @property
    def mzp(self) -> str:
        return self.subject.mzp

    def app(self, name: str) -> Application:
        for app in self.applications:
            if app.name == name:
                return app
        raise UserError(f"{self.source}: partner {self.mzp} has no application {name!r} "
                        f"(it has: {', '.join(a.name for a in self.applications)}); add it under 'applications'")


@dataclass(frozen=True)
class Inventory:
    path: Path
    partners: tuple[Partner, ...] = field(default_factory=tuple)
    sandbox_api: bool = False  # `partnercerts_sandbox_api: true`: tasks start the local sandbox API before deploying
    notify: NotifyConfig | None = None  # from `partnercerts_notify`
    metrics_textfile: str = ""  # `partnercerts_metrics_textfile`: rotate refreshes it

    def partner(self, mzp: str) -> Partner:
        for p in self.partners:
            if p.mzp == mzp:
                return p
        known = ", ".join(p.mzp for p in self.partners) or "none"
        raise UserError(f"--mzp {mzp}: no such partner in {self.path} (known: {known}); "
                        f"define it under {VAR} in {self.path}/group_vars/all/")

    def credentials(self, mzp: str | None = None, app: str | None = None) -> list[tuple[Partner, Application]]:
        """(partner, application) pairs, optionally narrowed to one partner and/or application."""
        partners = [self.partner(mzp)] if mzp else list(self.partners)
        out: list[tuple[Partner, Application]] = []
        for p in partners:
            apps = [p.app(app)] if app and mzp else [a for a in p.applications if app in (None, a.name)]
            out.extend((p, a) for a in apps)
        if app and not out:
            raise UserError(f"--app {app}: no partner in {self.path} has that application")
        return out


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # chosen at import
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one silently
    (on libyaml's parser where PyYAML has it: ten times faster on an inventory of a thousand credentials)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "found a mapping key that is a list or a mapping",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _var_files(root: Path) -> list[Path]:
    gv = root / "group_vars"
    files = [p for p in (gv / "all.yml", gv / "all.yaml") if p.is_file()]
    if (gv / "all").is_dir():
        files += sorted(p for p in (gv / "all").iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    return files


def load(path: Path) -> Inventory:
    """Load and validate every partner; the first problem raises a UserError naming file, partner and field."""
    if not path.is_dir():
        raise UserError(f"inventory {path} is not a directory; set PARTNERCERTS_INVENTORY to an inventory "
                        "directory such as inventories/local")
    partners: list[Partner] = []
    sandbox_api = False
    notify = None
    metrics_textfile = ""
    for file in _var_files(path):
        try:
            doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{file}:{mark.line + 1}" if mark else str(file)
            problem = getattr(exc, "problem", None) or exc
            raise UserError(f"{where}: not valid YAML ({problem}); fix the syntax") from None
        except UnicodeDecodeError:
            raise UserError(f"{file}: not UTF-8 text; save it as UTF-8") from None
        except RecursionError:
            raise UserError(f"{file}: not valid YAML (lists or mappings nested hundreds of levels deep); "
                            "fix the syntax") from None
        if not isinstance(doc, dict):
            continue
        if "partnercerts_sandbox_api" in doc:
            if not isinstance(doc["partnercerts_sandbox_api"], bool):
                raise UserError(f"{file}: partnercerts_sandbox_api must be true or false")
            sandbox_api = doc["partnercerts_sandbox_api"]
        if doc.get("partnercerts_notify"):
            from .notify import NotifyConfig
            notify = NotifyConfig.from_mapping(doc["partnercerts_notify"], f"{file}: partnercerts_notify")
        if "partnercerts_metrics_textfile" in doc:
            metrics_textfile = doc["partnercerts_metrics_textfile"] or ""
            if not isinstance(metrics_textfile, str) or (metrics_textfile and not clean_absolute(metrics_textfile)):
                raise UserError(f"{file}: partnercerts_metrics_textfile must be a plain absolute path, normalised "
                                "and without '..', e.g. /var/lib/node_exporter/textfile/partnercerts.prom")
        if VAR not in doc:
            continue
        raw_list = doc[VAR]
        if not isinstance(raw_list, list):
            raise UserError(f"{file}: {VAR} must be a list of partners")
        for i, raw in enumerate(raw_list):
            partners.append(_partner(raw, f"{file}: partner #{i + 1}", str(file)))
    seen: dict[str, str] = {}
    for p in partners:
        if p.mzp in seen:
            raise UserError(f"{p.source}: partner {p.mzp} is defined twice (also in {seen[p.mzp]}); "
                            "keep one definition")
        seen[p.mzp] = p.source
    return Inventory(path=path, partners=tuple(partners), sandbox_api=sandbox_api, notify=notify,
                     metrics_textfile=metrics_textfile)


def _partner(raw: object, where: str, source: str) -> Partner:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping with mzp, country, state, locality, organization, email, "
                        "applications")
    mzp = raw.get("mzp")
    if isinstance(mzp, str) and 0 < len(mzp) <= 20 and mzp.isprintable():  # else "partner #n" (one line, short)
        where = f"{source}: partner {mzp}"
    unknown = set(raw) - PARTNER_KEYS
    if unknown:
        raise UserError(f"{where}: unknown field(s) {names(unknown)}; "
                        f"allowed: {', '.join(sorted(PARTNER_KEYS))} (OU and CN are implied)")
    subject = make_subject(raw, where)
    submission = _submission(raw.get("submission", "sandbox"), where)
    renew = _days(raw, "renew_before_days", 60, where)
    reminder = _days(raw, "pending_reminder_days", 7, where)
    window = _days(raw, "deploy_window_days", 7, where)
    apps_raw = raw.get("applications")
    if not isinstance(apps_raw, list) or not apps_raw:
        raise UserError(f"{where}: field 'applications' must list at least one application (name, optional key)")
    apps: list[Application] = []
    for j, a in enumerate(apps_raw):
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, dict):
            raise UserError(f"{where}: application #{j + 1} must be a mapping with 'name' and optional 'key'")
        unknown = set(a) - APP_KEYS
        if unknown:
            raise UserError(f"{where}: application #{j + 1} has unknown field(s) {names(unknown)}; "
                            "allowed: name, key")
        name = check_app(a.get("name"), where)
        if any(x.name == name for x in apps):
            raise UserError(f"{where}: application {name!r} is listed twice; give each application a unique name")
        apps.append(Application(name=name, key_spec=check_key_spec(a.get("key"), f"{where}: application {name}")))
    from .imap import MailboxConfig
    mailbox = (MailboxConfig.from_mapping(raw["reply_mailbox"], f"{where}: reply_mailbox")
               if raw.get("reply_mailbox") is not None else None)
    return Partner(subject=subject, applications=tuple(apps), submission=submission, renew_before_days=renew,
                   pending_reminder_days=reminder, deploy_window_days=window, source=source, reply_mailbox=mailbox)


def clean_absolute(path: str) -> bool:
    """An absolute, normalised path on one line: no '..', '.', '//', trailing '/' or template."""
    return (path.startswith("/") and not path.startswith("//") and os.path.normpath(path) == path and path != "/"
            and path.isprintable() and "{{" not in path)


def _days(raw: dict, name: str, default: int, where: str) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 3650:
        raise UserError(f"{where}: field '{name}' is {shown(value)}; use a whole number of days from 1 to 3650")
    return value


def _submission(raw: object, where: str) -> Submission:
    """`submission: sandbox` or a mapping {method, to, from, dir (outbox), smtp (email)}."""
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: field 'submission' must be a method name or a mapping with 'method'")
    unknown = set(raw) - SUBMISSION_KEYS
    if unknown:
        raise UserError(f"{where}: submission has unknown field(s) {names(unknown)}; "
                        f"allowed: {', '.join(sorted(SUBMISSION_KEYS))}")
    method = raw.get("method")
    if not isinstance(method, str) or method not in SUBMISSION_METHODS:
        raise UserError(f"{where}: field 'submission' method is {shown(method)}; "
                        f"use one of {', '.join(SUBMISSION_METHODS)}")
    if method == "sandbox":
        return Submission()
    to = check_email(raw.get("to"), f"{where}: submission 'to'")
    sender = check_email(raw["from"], f"{where}: submission 'from'") if raw.get("from") else ""
    if method == "outbox":
        out = raw.get("dir")
        if not isinstance(out, str) or not clean_absolute(out):
            raise UserError(f"{where}: submission 'dir' must be an absolute directory path for the outbox, "
                            "normalised and without '..', e.g. /var/spool/partnercerts/outbox")
        return Submission(method, to, sender, outbox_dir=out)
    if not isinstance(raw.get("smtp"), dict):
        raise UserError(f"{where}: submission 'smtp' must be a mapping with host (port, security, user)")
    from .mail import SmtpConfig
    return Submission(method, to, sender, smtp=SmtpConfig.from_mapping(raw["smtp"], f"{where}: submission smtp"))
