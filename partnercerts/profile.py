"""The PSA/Stellantis partner subject profile and its validation."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError, shown

if TYPE_CHECKING:  # cryptography is imported where a Name is built: `status` never needs it
    from cryptography import x509

OU = "Programs Partners"
MZP_RE = re.compile(r"^MZP[0-9]{6}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# Local part and domain kept deliberately plain: the address receives the authority's mails.
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
                      r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
# Application names end up in Vault paths and in directory names on hosts.
APP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_SPECS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
DEFAULT_KEY_SPEC = "rsa2048"
# X.520 upper bounds (RFC 5280 appendix A): ST/L/O 128, email 255 (we keep 128 for the CSR).
MAX_LEN = {"state": 128, "locality": 128, "organization": 64, "email": 128}


@dataclass(frozen=True)
class Subject:
    """The subject of every certificate of one partner: OU and CN are implied."""

    mzp: str
    country: str
    state: str
    locality: str
    organization: str
    email: str

    def to_name(self) -> x509.Name:
        from cryptography import x509
        from cryptography.x509.oid import NameOID
        return x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, self.country),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, self.state),
            x509.NameAttribute(NameOID.LOCALITY_NAME, self.locality),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OU),
            x509.NameAttribute(NameOID.COMMON_NAME, self.mzp),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, self.email),
        ])

    def openssl_config(self, key_spec: str = DEFAULT_KEY_SPEC) -> str:
        """The OpenSSL parameter file a human can feed to `openssl req -new -config`."""
        rows = [
            ("C", self.country), ("ST", self.state), ("L", self.locality),
            ("O", self.organization), ("OU", OU), ("CN", self.mzp),
            ("emailAddress", self.email),
        ]
        dn = "\n".join(f"{k} = {_conf_escape(v)}" for k, v in rows)
        return (
            f"# PSA/Stellantis B2B partner CSR for {self.mzp}\n"
            f"# openssl req -new -newkey rsa:{KEY_SPECS[key_spec]} -keyout KeyName.pem -out CSRName.csr "
            "-config THIS_FILE\n"
            "[ req ]\n"
            f"default_bits = {KEY_SPECS[key_spec]}\n"
            "default_md = sha256\n"
            "prompt = no\n"
            "utf8 = yes\n"
            "string_mask = utf8only\n"
            "distinguished_name = dn\n"
            "\n[ dn ]\n"
            f"{dn}\n"
        )


def _conf_escape(value: str) -> str:
    # OpenSSL config values: backslash escapes, '$' expands variables, '#' starts a comment, and
    # '"', "'" and '`' all quote (an unescaped apostrophe vanishes: "Villeneuve-d'Ascq" -> "Villeneuve-dAscq").
    out = value.replace("\\", "\\\\").replace("$", "\\$").replace("#", "\\#")
    for quote in "\"'`":
        out = out.replace(quote, "\\" + quote)
    # Leading/trailing blanks are trimmed by the parser unless escaped.
    if out[:1] == " ":
        out = "\\" + out
    if out[-1:] == " ":
        out = out[:-1] + "\\ "
    return out


def check_text(field: str, value: object, where: str) -> str:
    """A free-text subject value: non-empty, printable, one line, bounded."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field '{field}' is missing or empty; set it to a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{where}: field '{field}' contains a control character or newline; use one line of plain text")
    if value != value.strip():
        raise UserError(f"{where}: field '{field}' has leading or trailing blanks; remove them")
    limit = MAX_LEN.get(field, 128)
    if len(value) > limit:
        raise UserError(f"{where}: field '{field}' is {len(value)} characters long; the limit is {limit}")
    return value


def check_mzp(value: object, where: str) -> str:
    if not isinstance(value, str) or not MZP_RE.fullmatch(value):
        raise UserError(f"{where}: field 'mzp' is {shown(value)}; "
                        "it must be 'MZP' followed by six digits, e.g. MZP123456")
    return value


def check_country(value: object, where: str) -> str:
    if not isinstance(value, str) or not COUNTRY_RE.fullmatch(value):
        raise UserError(f"{where}: field 'country' is {shown(value)}; "
                        "it must be two capital letters (ISO 3166), e.g. FR")
    return value


def check_email(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_LEN["email"] or not EMAIL_RE.fullmatch(value):
        raise UserError(f"{where}: field 'email' is {shown(value)}; "
                        "it must be a plain e-mail address, e.g. certs@example.com")
    return value


def check_app(value: object, where: str) -> str:
    if not isinstance(value, str) or not APP_RE.fullmatch(value):
        raise UserError(
            f"{where}: application name {shown(value)} is not allowed; "
            "use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit")
    return value


def check_key_spec(value: object, where: str) -> str:
    if value is None:
        return DEFAULT_KEY_SPEC
    if not isinstance(value, str) or value not in KEY_SPECS:
        raise UserError(f"{where}: field 'key' is {shown(value)}; use one of {', '.join(KEY_SPECS)}")
    return value


def make_subject(raw: dict, where: str) -> Subject:
    """Validate the subject fields of one partner definition."""
    return Subject(
        mzp=check_mzp(raw.get("mzp"), where),
        country=check_country(raw.get("country"), where),
        state=check_text("state", raw.get("state"), where),
        locality=check_text("locality", raw.get("locality"), where),
        organization=check_text("organization", raw.get("organization"), where),
        email=check_email(raw.get("email"), where),
    )


def name_key(name: x509.Name) -> list[tuple[str, str]]:
    """A comparable form of a Name: its attributes as (OID, value), order-free."""
    return sorted((a.oid.dotted_string, a.value if isinstance(a.value, str) else a.value.hex()) for a in name)
