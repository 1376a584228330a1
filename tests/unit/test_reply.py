"""The reply e-mail parser: every shape the authority sends, every refusal, and the URL rules of fetch."""
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from partnercerts import certs
from partnercerts.errors import UserError
from partnercerts.reply import Reply, fetch, host_allowed, parse_eml, shown_url
from tests.fixtures import make_replies as mk

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return mk.make_all(tmp_path_factory.mktemp("replies"))


def parse(made, name: str) -> Reply:
    return parse_eml(made[name].read_bytes(), max_bytes=LIMIT, source=name)


def refused(data: bytes, source: str = "reply.eml", limit: int = LIMIT) -> str:
    with pytest.raises(UserError) as exc:
        parse_eml(data, max_bytes=limit, source=source)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    assert not any(token in message for token in mk.TOKENS), message
    return message


def simple(body: str, subtype: str = "plain") -> bytes:
    return mk.message("Your certificate", body, subtype=subtype).as_bytes()


# ---------------------------------------------------------------- the shapes the authority sends


def test_english_plain_text_two_links_and_client_id(made):
    reply = parse(made, "english_plain.eml")
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (mk.EN_CERT_URL, mk.EN_CA_URL, mk.EN_CLIENT_ID)
    assert reply.cert is None and reply.ca is None and reply.problems == []


def test_french_html_only_hrefs_and_identifiant_client(made):
    reply = parse(made, "french_html.eml")
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (mk.FR_CERT_URL, mk.FR_CA_URL, mk.FR_CLIENT_ID)
    assert reply.problems == []


def test_attached_pem_certificate_and_der_ca(made):
    reply = parse(made, "attached.eml")
    assert reply.cert == mk.pem(made.leaf)
    assert certs.load_bundle(reply.cert, "cert", LIMIT) == [made.leaf]
    assert certs.load_anchors(reply.ca, "ca", LIMIT) == [made.ca]
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (None, None, mk.ATT_CLIENT_ID)
    assert reply.problems == []


def test_the_same_certificate_attached_twice_is_not_ambiguous(made):
    reply = parse(made, "attached_twice.eml")
    assert certs.load_bundle(reply.cert, "cert", LIMIT) == [made.leaf]


def test_pkcs7_attachment_is_the_certificate(made):
    reply = parse(made, "pkcs7.eml")
    assert set(certs.load_bundle(reply.cert, "cert", LIMIT)) == {made.leaf, made.ca}
    assert reply.ca is None  # a CA inside the certificate's own bundle is not taken as the trust anchor
    assert reply.client_id == mk.P7_CLIENT_ID


def test_quoted_printable_soft_breaks_inside_the_urls(made):
    raw = made["quoted_printable.eml"].read_bytes()
    assert b"=\r\n" in raw and b"=3D" in raw  # the fixture really breaks the URLs
    reply = parse(made, "quoted_printable.eml")
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (mk.QP_CERT_URL, mk.QP_CA_URL, mk.QP_CLIENT_ID)


def test_html_alternative_with_safe_links_and_a_table(made):
    reply = parse(made, "alternative_safelinks.eml")
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (mk.EN_CERT_URL, mk.EN_CA_URL, mk.EN_CLIENT_ID)


def test_forwarded_reply_is_read(made):
    reply = parse(made, "forwarded.eml")
    assert (reply.cert_url, reply.ca_url, reply.client_id) == (mk.EN_CERT_URL, mk.EN_CA_URL, mk.EN_CLIENT_ID)


def test_certificate_pasted_in_the_body(made):
    reply = parse(made, "body_pem.eml")
    assert certs.load_bundle(reply.cert, "cert", LIMIT) == [made.leaf]
    assert certs.load_anchors(reply.ca, "ca", LIMIT) == [made.ca]


def test_pem_pasted_in_html_or_in_a_quoted_forward_is_read(made):
    text = mk.pem(made.leaf).decode()
    html = f"<p>Your certificate:</p><pre>{text}</pre><p>Client ID: a1</p>"
    quoted = "> Your certificate:\n" + "".join(f"> {line}\u00a0\n" for line in text.splitlines())
    for data in (simple(html, "html"), simple(quoted)):
        reply = parse_eml(data, max_bytes=LIMIT)
        assert certs.load_bundle(reply.cert, "cert", LIMIT) == [made.leaf]


def test_http_link_is_kept_flagged_and_refused_by_fetch(made):
    reply = parse(made, "http_link.eml")
    assert reply.cert_url == mk.HTTP_CERT_URL
    assert any("not https://" in p and "PlainHttpT0k3n" not in p for p in reply.problems)
    with pytest.raises(UserError, match=r"^http://pki\.stellantis\.example/d/5be1: not an https:// link") as exc:
        fetch(reply.cert_url, max_bytes=LIMIT, allowed_hosts=None, timeout=1)
    assert "PlainHttpT0k3n" not in str(exc.value)


# ---------------------------------------------------------------- refusals


def test_no_link_at_all_is_refused(made):
    message = refused(made["no_link.eml"].read_bytes(), "no_link.eml")
    assert "no certificate" in message and "give --cert or --url explicitly" in message


def test_several_certificate_links_are_ambiguous(made):
    message = refused(made["many_links.eml"].read_bytes(), "many_links.eml")
    assert "3 different certificate links" in message and "give --cert or --url explicitly" in message
    assert "https://pki.stellantis.example/d/a1" in message


def test_several_different_attached_certificates_are_ambiguous(made):
    message = refused(made["two_certificates.eml"].read_bytes(), "two_certificates.eml")
    assert "2 different certificates" in message and "MZP123456-telematics.pem" in message
    assert "give --cert or --url explicitly" in message


def test_huge_body_is_over_the_limit(made):
    data = made["huge.eml"].read_bytes()
    assert len(data) > mk.HUGE_BYTES
    assert "over the limit of 1048576 bytes" in refused(data, "huge.eml")


@pytest.mark.parametrize("data,match", [
    (b"", "empty file"),
    (b"  \r\n\n", "empty file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "an Outlook .msg file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not an e-mail"),
    (b"just some text, no headers\nat all\n", "not an e-mail"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "not an e-mail"),
])
def test_not_an_email_is_refused(data, match):
    assert match in refused(data)


def test_only_a_ca_link_is_not_a_certificate():
    message = refused(simple("Download the CA certificate: https://pki.stellantis.example/ca/root.crt\n"))
    assert "only a CA certificate was found" in message


# ---------------------------------------------------------------- classification and Client ID


def test_link_alone_under_a_french_label_and_footer_links_are_ignored():
    reply = parse_eml(simple("Bonjour,\n\nTélécharger votre certificat :\nhttps://pki.stellantis.example/t/1?j=a\n\n"
                             "Chaîne de certification :\nhttps://pki.stellantis.example/t/2?j=b\n\n"
                             "Cordialement,\nAutorité de certification Stellantis\nhttps://www.stellantis.com/\n"
                             "Téléchargez notre application : https://apps.example/stellantis\n"),
                      max_bytes=LIMIT)
    assert (reply.cert_url, reply.ca_url) == ("https://pki.stellantis.example/t/1?j=a",
                                              "https://pki.stellantis.example/t/2?j=b")


def test_when_every_link_is_called_ca_the_urls_decide():
    reply = parse_eml(simple("The certificate issued by our authority: https://pki.example/files/MZP123456.crt\n"
                             "The authority's root certificate: https://pki.example/files/root.crt\n"),
                      max_bytes=LIMIT)
    assert (reply.cert_url, reply.ca_url) == ("https://pki.example/files/MZP123456.crt",
                                              "https://pki.example/files/root.crt")


def test_several_ca_links_are_a_problem_not_a_refusal():
    reply = parse_eml(simple("Your certificate: https://pki.example/d/1\nCA certificate: https://pki.example/d/2\n"
                             "Root certificate: https://pki.example/d/3\n"), max_bytes=LIMIT)
    assert reply.cert_url == "https://pki.example/d/1" and reply.ca_url is None
    assert any("2 different CA certificate links" in p for p in reply.problems)


def test_smime_signed_part_is_not_taken_for_a_certificate(made):
    msg = mk.message("Your certificate", f"Download your certificate: {mk.EN_CERT_URL}\nClient ID: x1\n")
    signed = pkcs7.serialize_certificates([made.leaf], serialization.Encoding.DER)
    msg.add_attachment(signed, "application", "pkcs7-mime", filename="smime.p7m", params={"smime-type": "signed-data"})
    reply = parse_eml(msg.as_bytes(), max_bytes=LIMIT)
    assert reply.cert is None and reply.cert_url == mk.EN_CERT_URL


@pytest.mark.parametrize("line", [
    "Client ID: abc-123",
    "client id : abc-123",
    "Client-ID : abc-123",
    "CLIENT_ID=abc-123",
    "client_id = abc-123",
    "Your Client ID: abc-123.",
    "Identifiant client : abc-123",
    "Identifiant client\u00a0: abc-123",
    "Identifiant du client\u202f: «abc-123»",
    "ID client : abc-123",
    "Identifiant client (Client ID) : abc-123",
    "> Client ID: abc-123",
    "Client ID:\n    abc-123",
])
def test_client_id_forms(line):
    reply = parse_eml(simple(f"Download your certificate: https://pki.example/d/1\n{line}\n"), max_bytes=LIMIT)
    assert reply.client_id == "abc-123", reply.problems


def test_client_id_in_an_html_table_cell():
    html = ('<p><a href="https://pki.example/d/1">Download your certificate</a></p>'
            "<table><tr><th>Client ID</th><td><code>abc-123</code></td></tr></table>")
    assert parse_eml(simple(html, "html"), max_bytes=LIMIT).client_id == "abc-123"


@pytest.mark.parametrize("text", [
    "Your Client ID will follow.\n",
    "Example: https://api-cert.groupe-psa.com/connectedcar/v3/fleets?client_id=abc-123\n",
    "Client ID: \n\nThe links expire in 7 days.\n\n",
    "Client ID: " + "a" * 129 + "\n",
])
def test_no_client_id_is_a_problem(text):
    reply = parse_eml(simple(f"Download your certificate: https://pki.example/d/1\n{text}"), max_bytes=LIMIT)
    assert reply.client_id is None
    assert "no Client ID found in the reply; give --client-id explicitly" in reply.problems


def test_several_client_ids_are_a_problem():
    reply = parse_eml(simple("Download your certificate: https://pki.example/d/1\nClient ID: one\nClient ID: two\n"),
                      max_bytes=LIMIT)
    assert reply.client_id is None and any("several Client IDs in the reply (one, two)" in p for p in reply.problems)


# ---------------------------------------------------------------- URL rules (no network)


@pytest.mark.parametrize("url,shown", [
    ("https://pki.example/d/1?token=secret", "https://pki.example/d/1"),
    ("https://user:pa55@pki.example/d/1#frag", "https://pki.example/d/1"),
    ("https://pki.example?token=secret@evil", "https://pki.example"),
    ("http://pki.example:8443/a b", "http://pki.example:8443/a?b"),
])
def test_shown_url_hides_query_and_credentials(url, shown):
    assert shown_url(url) == shown


@pytest.mark.parametrize("host,patterns,ok", [
    ("pki.stellantis.com", ["pki.stellantis.com"], True),
    ("PKI.Stellantis.com.", ["pki.stellantis.com"], True),
    ("a.b.stellantis.com", ["*.stellantis.com"], True),
    ("stellantis.com", ["*.stellantis.com"], False),
    ("evilstellantis.com", ["*.stellantis.com"], False),
    ("stellantis.com.evil.example", ["*.stellantis.com", "stellantis.com"], False),
    ("127.0.0.1", ["127.0.0.1"], True),
    ("anything.example", [], False),
])
def test_host_allowed(host, patterns, ok):
    assert host_allowed(host, patterns) is ok


@pytest.mark.parametrize("url,match", [
    ("ftp://pki.example/cert.crt", "not an https:// link"),
    ("file:///etc/passwd", "not an https:// link"),
    ("pki.example/cert.crt", "not an https:// link"),
    ("https://user:pw@pki.example/cert.crt?t=secret", "user name or password"),
    ("https://pki.example:99999/x", "not a valid URL"),
    ("https://pki.example/a\r\nHost: evil", "not a valid URL"),
    ("https:///nohost", "no valid host name"),
    ("https://evil.example/cert?t=secret", "not one of the allowed download hosts"),
])
def test_fetch_refuses_bad_urls_before_connecting(url, match):
    with pytest.raises(UserError, match=match) as exc:
        fetch(url, max_bytes=LIMIT, allowed_hosts=["*.stellantis.example"], timeout=1)
    assert "secret" not in str(exc.value) and "pw" not in str(exc.value) and "\n" not in str(exc.value)
