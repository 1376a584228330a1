"""Where an imported certificate comes from: a file, a download link, or a saved reply e-mail."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError
from .importer import Source
from .settings import Settings


@dataclass
class Resolved:
    cert: Source
    ca: Source | None = None
    client_id: str | None = None
    problems: list[str] = field(default_factory=list)  # what a reply e-mail held that was not used, and why


def from_file(settings: Settings, path: str) -> Source:
    """A certificate or CA file, read within the input size limit (named by its path in messages)."""
    from . import certs
    return Source(certs.read_file(path, settings.max_input_bytes), path)


def resolve(settings: Settings, *, cert: str | None = None, url: str | None = None, eml: str | None = None,
            ca: str | None = None, client_id: str | None = None) -> Resolved:
    """Read the one source given (and the CA file); links obey the HTTPS-only, allowed-hosts and size rules."""
    from . import certs, reply
    if sum(x is not None for x in (cert, url, eml)) != 1:
        raise UserError("give exactly one of --cert FILE, --url LINK or --eml FILE")
    ca_source = from_file(settings, ca) if ca else None
    if cert:
        return Resolved(from_file(settings, cert), ca_source, client_id)
    if url:
        return Resolved(download(settings, url), ca_source, client_id)
    assert eml is not None
    found = reply.parse_eml(certs.read_file(eml, settings.max_eml_bytes), max_bytes=settings.max_eml_bytes, source=eml)
    return from_reply(settings, found, eml, ca_source, client_id)


def from_reply(settings: Settings, found, name: str, ca_source: Source | None = None,
               client_id: str | None = None) -> Resolved:
    """The certificate, CA and Client ID of a parsed reply (`reply.Reply`), downloading what it links to."""
    if found.cert is not None:
        got = Source(found.cert, f"{name} (attachment)")
    else:
        assert found.cert_url is not None  # parse_eml refuses a reply with neither
        got = download(settings, found.cert_url)
    if ca_source is None and found.ca is not None:
        ca_source = Source(found.ca, f"{name} (CA attachment)")
    elif ca_source is None and found.ca_url:
        ca_source = download(settings, found.ca_url)
    return Resolved(got, ca_source, client_id or found.client_id, list(found.problems))


def download(settings: Settings, link: str) -> Source:
    """A link of the authority's reply: HTTPS only, allowed hosts, bounded size (`reply.fetch`)."""
    from . import reply
    data = reply.fetch(link, max_bytes=settings.max_input_bytes, allowed_hosts=list(settings.download_hosts),
                       cafile=settings.download_cafile)
    return Source(data, reply.shown_url(link))
