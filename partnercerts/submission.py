"""The CSR e-mail to the authority: built once, sent over SMTP (`email`) or left as a ready-to-send
.eml with the CSR and the OpenSSL parameter file in a directory (`outbox`)."""
from __future__ import annotations

import datetime as dt
import email.utils
import os
from email.message import EmailMessage
from pathlib import Path

from .errors import UserError
from .inventory import Partner
from .profile import KEY_SPECS, OU


def new_message_id(partner: Partner) -> str:
    return email.utils.make_msgid(idstring=f"{partner.mzp}", domain=partner.subject.email.split("@", 1)[1])


def build(partner: Partner, app: str, *, csr_pem: str, key_sha256: str, key_spec: str, message_id: str,
          now: dt.datetime, rekey: dict | None = None) -> EmailMessage:
    """The request as the authority's contact expects it: CSR attached, subject and key fingerprint in the body.
    With `rekey` (an emergency re-key): marked urgent, and asking to revoke the old key's certificate by serial."""
    s = partner.subject
    msg = EmailMessage()
    msg["From"] = partner.submission.sender or s.email
    msg["To"] = partner.submission.to
    msg["Reply-To"] = s.email
    msg["Subject"] = (f"URGENT: key replacement for {s.mzp}, application {app}" if rekey else
                      f"Certificate request for {s.mzp}, application {app}")
    if rekey:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = message_id
    urgent = (
        f"URGENT: this request replaces the key of the current certificate, serial {rekey.get('revoke_serial')} "
        f"(reason: {rekey.get('reason')}). Please issue the new certificate as soon as possible, and revoke "
        f"certificate serial {rekey.get('revoke_serial')} once it is issued.\n\n") if rekey else ""
    msg.set_content(
        "Hello,\n\n" + urgent +
        f"Please find attached the certificate signing request of partner {s.mzp} for its application "
        f"'{app}' on the B2B connected-car API.\n\n"
        f"  C (country)            {s.country}\n"
        f"  ST (state/province)    {s.state}\n"
        f"  L (locality)           {s.locality}\n"
        f"  O (organization)       {s.organization}\n"
        f"  OU                     {OU}\n"
        f"  CN (MZP)               {s.mzp}\n"
        f"  emailAddress           {s.email}\n"
        f"  application            {app}\n"
        f"  key                    RSA {KEY_SPECS.get(key_spec, 2048)} bits\n"
        f"  public key SHA-256     {key_sha256}\n\n"
        f"Please send the signed certificate, the CA certificate and the Client ID to {s.email}.\n\n"
        "Thank you.\n"
    )
    msg.add_attachment(csr_pem.encode("ascii"), maintype="application", subtype="pkcs10",
                       filename=f"{s.mzp}-{app}.csr")
    return msg


def write_outbox(directory: str, partner: Partner, app: str, msg: EmailMessage, csr_pem: str, conf: str,
                 now: dt.datetime) -> Path:
    """Write <dir>/<MZP>-<app>-<UTC time>/ with the CSR, the parameter file and the .eml; returns the folder."""
    base = Path(directory)
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = base / f"{partner.mzp}-{app}-{now.astimezone(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
        folder.mkdir(exist_ok=True)
        for name, data in ((f"{partner.mzp}-{app}.csr", csr_pem.encode()), (f"{partner.mzp}-{app}.conf", conf.encode()),
                           (f"{partner.mzp}-{app}.eml", bytes(msg))):
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / name)
    except OSError as exc:
        raise UserError(f"outbox {directory}: cannot write ({exc.strerror}); fix the 'dir' of the "
                        f"submission of {partner.mzp} or its permissions") from None
    return folder
