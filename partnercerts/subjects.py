"""The subject rules of the import gate: what an authority may change in the subject it signs, by meaning.

Real authorities rebuild the subject from their own policy instead of copying the CSR (`openssl ca` keeps
the attributes its policy lists, in its order; a Vault/OpenBao PKI role writes its own O, OU and C and
adds a SAN). `compare` tells the changes that alter who the certificate identifies from those that do not.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

# The short names `openssl x509 -subject` prints (OpenSSL's obj_mac.h), for every message.
SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.STREET_ADDRESS: "street", NameOID.DOMAIN_COMPONENT: "DC", NameOID.USER_ID: "UID",
    NameOID.TITLE: "title", NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.INITIALS: "initials",
    NameOID.PSEUDONYM: "pseudonym", NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier", NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory", NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC", NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
}
# What identifies the partner besides the CN: a change is refused unless a human accepts it.
IDENTITY = (NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME, NameOID.COUNTRY_NAME)
MAX_SHOWN = 80  # characters of one value in a message


def short_name(oid: x509.ObjectIdentifier) -> str:
    return SHORT_NAMES.get(oid, oid.dotted_string)


def _value(attr: x509.NameAttribute) -> str:
    return attr.value if isinstance(attr.value, str) else attr.value.hex()


def _escaped(value: str) -> str:
    out = "".join("\\" + c if c in ',+\\"<>;' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") and len(out) > 1 else out


def show_name(name: x509.Name) -> str:
    """A subject as `openssl x509 -noout -subject -nameopt sep_comma_plus_space,esc_2253,utf8,sname` prints it:
    certificate order, short names, RFC 2253 escapes, ', ' between RDNs and ' + ' inside a multi-valued one."""
    return ", ".join(" + ".join(f"{short_name(a.oid)}={_escaped(_value(a))}" for a in rdn) for rdn in name.rdns)


def _shown(value: str) -> str:
    text = value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "…"
    return repr(text)


def _shown_all(values: list[str]) -> str:
    return ", ".join(_shown(v) for v in values) if values else "none"


def normalised(value: str) -> str:
    """A value as people read it: Unicode NFKC, case folded, runs of blanks as one space, no outer blanks."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _encoding(attr: x509.NameAttribute) -> str:
    kind = getattr(attr, "_type", None)
    return kind.name if kind is not None else "?"


def _by_oid(name: x509.Name) -> dict[x509.ObjectIdentifier, list[x509.NameAttribute]]:
    out: dict[x509.ObjectIdentifier, list[x509.NameAttribute]] = {}
    for attr in name:
        out.setdefault(attr.oid, []).append(attr)
    return out


def _san(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


_SAN_PREFIX = {x509.DNSName: "DNS", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "URI",
               x509.IPAddress: "IP Address", x509.RegisteredID: "Registered ID", x509.DirectoryName: "DirName",
               x509.OtherName: "othername"}


def show_general_name(gn: x509.GeneralName) -> str:
    """One SAN entry as `openssl x509 -ext subjectAltName` prints it (DNS:..., email:..., URI:...)."""
    value = gn.value
    if isinstance(gn, x509.DirectoryName):
        text = show_name(gn.value)
    elif isinstance(gn, x509.RegisteredID):
        text = value.dotted_string
    elif isinstance(gn, x509.OtherName):
        text = gn.type_id.dotted_string
    else:
        text = str(value)
    return f"{_SAN_PREFIX.get(type(gn), type(gn).__name__)}:{text}"


@dataclass(frozen=True)
class SubjectDecision:
    """What the subject rules say of a certificate signed for a CSR."""

    refusal: str = ""                                        # refused whatever anyone accepts
    identity_changes: list[str] = field(default_factory=list)  # OU, O, C differ: refused unless accepted
    differences: list[str] = field(default_factory=list)       # accepted, each named in a warning


def compare(requested: x509.Name, requested_san: list[x509.GeneralName], cert: x509.Certificate) -> SubjectDecision:
    """The subject rules, in the order they apply (the pending-key rule comes first, in `certs.gate`):

    1. The CN must be exactly the CSR's CN, the partner's MZP login, once: it is who the API
       authenticates. Anything else is refused, with no way to accept it.
    2. OU, O and C must hold the CSR's values, compared after Unicode normalisation (NFKC), case
       folding and collapsing blanks. A changed, dropped or added value is an identity change: it is
       refused, showing both values, unless a human who checked with the authority accepts it
       (`--accept-subject-change`, recorded with the certificate in Vault).
    3. Anything else the authority does is accepted, and each difference is named in a warning:
       a. an attribute re-encoded (PrintableString / UTF8String, the case of the country code, blanks);
       b. an attribute dropped (ST, L, emailAddress, ...), or the e-mail address moved from the
          subject to the SAN (rfc822Name);
       c. an attribute added, or the value of an attribute other than CN, OU, O, C changed;
       d. the attributes in another order;
       e. SAN entries added.
    Values are shown with the short names `openssl x509 -subject` prints (C, ST, L, O, OU, CN, emailAddress).
    """
    want, got = _by_oid(requested), _by_oid(cert.subject)
    mzp = [_value(a) for a in want.get(NameOID.COMMON_NAME, [])]
    cns = [_value(a) for a in got.get(NameOID.COMMON_NAME, [])]
    if cns != mzp:
        found = _shown_all(cns) if len(cns) != 1 else _shown(cns[0])
        return SubjectDecision(refusal=f"CN is {found}, not the MZP {_shown_all(mzp)} of the CSR; a certificate "
                                       "for another login cannot authenticate this partner, ask the authority to "
                                       "sign the CSR for its own CN")
    identity: list[str] = []
    notes: list[str] = []
    cert_san = _san(cert)
    san_emails = {normalised(str(g.value)) for g in cert_san if isinstance(g, x509.RFC822Name)}
    moved: set[str] = set()
    for oid in list(want) + [o for o in got if o not in want]:
        name = short_name(oid)
        before, after = want.get(oid, []), got.get(oid, [])
        old, new = [_value(a) for a in before], [_value(a) for a in after]
        if sorted(map(normalised, old)) == sorted(map(normalised, new)):
            recoded = [(a, b) for a, b in zip(sorted(before, key=lambda x: normalised(_value(x))),
                                              sorted(after, key=lambda x: normalised(_value(x))), strict=True)
                       if _value(a) != _value(b) or _encoding(a) != _encoding(b)]
            for a, b in recoded:
                if _encoding(a) == _encoding(b):
                    notes.append(f"{name} written {_shown(_value(b))} (CSR: {_shown(_value(a))})")
                elif _value(a) == _value(b):
                    notes.append(f"{name} re-encoded as {_encoding(b)} (CSR: {_encoding(a)})")
                else:
                    notes.append(f"{name} re-encoded: {_shown(_value(b))} as {_encoding(b)} "
                                 f"(CSR: {_shown(_value(a))} as {_encoding(a)})")
            continue
        if oid in IDENTITY:
            identity.append(_difference(name, old, new, added=" added (the CSR has none)"))
        elif oid == NameOID.EMAIL_ADDRESS and not new and all(normalised(v) in san_emails for v in old):
            moved.update(normalised(v) for v in old)
            notes.append(f"emailAddress moved to the SAN (email:{', email:'.join(old)})")
        else:
            notes.append(_difference(name, old, new, added=" added"))
    order_want = [a.oid for a in requested if a.oid in got]
    order_got = [a.oid for a in cert.subject if a.oid in want]
    if _first_seen(order_want) != _first_seen(order_got):
        notes.append(f"attributes reordered: {', '.join(short_name(o) for o in _first_seen(order_got))} "
                     f"(CSR: {', '.join(short_name(o) for o in _first_seen(order_want))})")
    asked = {show_general_name(g) for g in requested_san}
    added = [show_general_name(g) for g in cert_san
             if show_general_name(g) not in asked
             and not (isinstance(g, x509.RFC822Name) and normalised(str(g.value)) in moved)]
    if added:
        notes.append(f"SAN added: {', '.join(added[:8])}" + (f" and {len(added) - 8} more" if len(added) > 8 else ""))
    return SubjectDecision(identity_changes=identity, differences=notes)


def _difference(name: str, old: list[str], new: list[str], added: str) -> str:
    """One attribute's values that differ: dropped, added, or changed (the CSR's shown beside)."""
    if not new:
        return f"{name} dropped (CSR: {_shown_all(old)})"
    if not old:
        return f"{name} {_shown_all(new)}{added}"
    return f"{name} {_shown_all(new)} (CSR: {_shown_all(old)})"


def _first_seen(oids: list[x509.ObjectIdentifier]) -> list[x509.ObjectIdentifier]:
    out: list[x509.ObjectIdentifier] = []
    for oid in oids:
        if oid not in out:
            out.append(oid)
    return out
