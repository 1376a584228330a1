"""One error tree: every failure the core reports is an `Error` of one kind, each kind with its exit code.

The core says what is wrong (one line naming the input) and, as a `Remedy`, what would fix it.
The edge that knows its own commands words the remedy: the Invoke tasks name `scripts/inv ...`,
the Ansible plugins name playbook variables (`partnercerts/tasks/_hints.py`, `plugins/plugin_utils`).
hvac and requests exceptions are translated into this tree in one place (`partnercerts/vault.py`).

    Error                  1  anything else of ours
    ├── UserError          2  bad input: arguments, inventory, files, settings
    ├── Conflict           3  another run changed the same record first, or holds the lock
    ├── EnvironmentFault   4  the world around: Vault sealed, down, unreachable, denied, not set up;
    │                         an SMTP, IMAP or download server that fails
    ├── IntegrityError     5  a read-back that differs, Vault's key not matching its certificate
    └── GateRefusal        6  the import gate refused a certificate
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Mapping


class Remedy(str, enum.Enum):
    """What would fix an error or act on a note, named by meaning; edges word it as their own command."""

    VAULT_UP = "vault_up"                      # start and unseal the (embedded) Vault
    BOOTSTRAP = "bootstrap"                    # create the KV v2 mount (and policies)
    MAKE_CSR = "make_csr"                      # mzp, app: make a key and CSR
    ROTATE = "rotate"                          # mzp, app: run a rotation for the credential
    ROLLBACK = "rollback"                      # mzp, app: make an earlier certificate current
    STORE_ACCOUNT_PASSWORD = "account"         # mzp: store the MZP password
    STORE_SMTP_PASSWORD = "smtp_password"      # mzp (or none: notifications)
    RESEND = "resend"                          # send pending CSRs again
    IMPORT_REPLY = "import_reply"              # mzp, app: import the authority's reply
    DEPLOY = "deploy"                          # mzp, app: deploy the credential to its hosts
    STATUS = "status"                          # list every credential
    SANDBOX_DOWN = "sandbox_down"              # stop the running sandbox API
    ACCEPT_SUBJECT_CHANGE = "accept_subject"   # import again, accepting the authority's change of OU/O/C
    STORE_MAILBOX_PASSWORD = "mailbox_password"  # mzp: store the reply mailbox's password


class Error(Exception):
    """Root of every error the core raises on purpose: print `worded(...)`, exit `exit_code`, nothing changed."""

    exit_code = 1

    def __init__(self, message: str, remedy: Remedy | None = None, **context: str):
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.context = context

    def __str__(self) -> str:
        return self.message

    def worded(self, hints: "Hints") -> str:
        """The message with the remedy in the words of one edge (`hints`: Remedy -> format string)."""
        return with_hint(self.message, self.remedy, hints, self.context)


Hints = Mapping[Remedy, "str | Callable[[Mapping[str, str]], str]"]


def with_hint(message: str, remedy: Remedy | None, hints: Hints, context: Mapping[str, str]) -> str:
    """`message`, then the remedy as `hints` words it: a format string of the context, or a function of it."""
    template = hints.get(remedy) if remedy is not None else None
    if not template:
        return message
    try:
        hint = template(context) if callable(template) else template.format(**context)
    except (KeyError, IndexError):
        return message
    return f"{message}; {hint}" if message else hint


class UserError(Error):
    """Bad input (arguments, inventory, files, settings): the user fixes the input and runs again."""

    exit_code = 2


class Conflict(Error):
    """Another run changed the same record first (check-and-set lost), or holds what this run needs."""

    exit_code = 3


class EnvironmentFault(Error):
    """A service around the toolkit is not usable.

    Vault (sealed, down, unreachable, denied, not set up), SMTP, downloads.
    """

    exit_code = 4


class VaultUnavailable(EnvironmentFault):
    """Vault is sealed, down, unreachable, or fails TLS verification."""


class VaultDenied(EnvironmentFault):
    """Vault refused the token (invalid, expired) or its policy does not allow the request."""


class NotSetUp(EnvironmentFault):
    """Vault answers but is not prepared for partnercerts (no KV v2 mount)."""


class ServiceFailure(EnvironmentFault):
    """An SMTP server, a mailbox or a download host failed or refused."""


class IntegrityError(Error):
    """What Vault holds is inconsistent: a read-back that differs, a key that does not match its certificate."""

    exit_code = 5


class GateRefusal(Error):
    """The import gate refused a certificate; nothing was imported."""

    exit_code = 6


def exit_codes() -> dict[str, int]:
    """Each kind's exit code, as the README documents them."""
    return {cls.__name__: cls.exit_code for cls in (Error, UserError, Conflict, EnvironmentFault,
                                                     IntegrityError, GateRefusal)}


def shown(value: object, limit: int = 80) -> str:
    """A value as a one-line message may quote it: its repr (control characters escaped), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def names(keys) -> str:
    """Field names as a one-line message lists them: plain when short printable words, else quoted; at most 8."""
    out = sorted(k if isinstance(k, str) and 0 < len(k) <= 40 and k.isprintable() and " " not in k else shown(k, 40)
                 for k in keys)
    return ", ".join(out[:8]) + (f" and {len(out) - 8} more" if len(out) > 8 else "")
