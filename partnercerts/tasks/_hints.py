"""The core's remedies in the words of this command line (`scripts/inv`, or the `partnercerts` command)."""
from __future__ import annotations

from ..errors import Hints, Remedy

HINTS: Hints = {
    Remedy.VAULT_UP: "or run scripts/inv vault.up for the embedded one",
    Remedy.BOOTSTRAP: "to create it, run scripts/inv vault.bootstrap with an operator token",
    Remedy.MAKE_CSR: "run scripts/inv csr --mzp {mzp} --app {app}",
    Remedy.ROTATE: "run scripts/inv rotate --mzp {mzp} --app {app}",
    Remedy.ROLLBACK: "run scripts/inv rollback --mzp {mzp} --app {app}",
    Remedy.STORE_ACCOUNT_PASSWORD: "run scripts/inv account --mzp {mzp}",
    Remedy.STORE_SMTP_PASSWORD:
        lambda c: "run scripts/inv smtp-password" + (f" --mzp {c['mzp']}" if c.get("mzp") else ""),
    Remedy.RESEND: "scripts/inv submit --resend sends it again",
    Remedy.IMPORT_REPLY: "scripts/inv import-cert --mzp {mzp} --app {app} --eml REPLY.eml",
    Remedy.DEPLOY: "deploy it with scripts/inv deploy --only {mzp}/{app}",
    Remedy.STATUS: "scripts/inv status shows every credential",
    Remedy.SANDBOX_DOWN: "run scripts/inv sandbox.down first",
    Remedy.STORE_MAILBOX_PASSWORD: "run scripts/inv mailbox-password --mzp {mzp}",
    Remedy.ACCEPT_SUBJECT_CHANGE: "if the authority confirms the change, import it again with --accept-subject-change",
}
