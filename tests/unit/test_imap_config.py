"""The `reply_mailbox` inventory block: defaults, and one clear line for each mistake."""
import pytest

from partnercerts.errors import UserError
from partnercerts.imap import MailboxConfig

WHERE = "partners.yml: partner MZP128745: reply_mailbox"


def test_defaults_follow_the_security():
    tls = MailboxConfig.from_mapping({"host": "imap.example.com", "user": "pki@example.com"}, WHERE)
    assert (tls.port, tls.security, tls.folder, tls.processed_folder) == (993, "tls", "INBOX",
                                                                           "partnercerts/processed")
    assert MailboxConfig.from_mapping({"host": "imap.example.com", "user": "u", "security": "starttls"},
                                      WHERE).port == 143
    assert tls.server == "imap pki@example.com@imap.example.com:993"


@pytest.mark.parametrize("raw,match", [
    ({"host": "imap.example.com", "user": "u", "password": "x"}, "field 'password' is not allowed in the inventory"),
    ({"host": "imap.example.com", "user": "u", "pasword": "x"}, r"unknown field\(s\) pasword; allowed: host, port"),
    ({"user": "u"}, "field 'host' is None; give the IMAP server's name or address, e.g. imap.example.com"),
    ({"host": "imap.example.com"}, "field 'user' is missing"),
    ({"host": "imap.example.com", "user": "u", "security": "ssl"}, "field 'security' is 'ssl'; use one of tls"),
    ({"host": "imap.example.com", "user": "u", "port": 0}, "field 'port' is 0; use a port number from 1 to 65535 "
                                                           r"\(993 for tls, 143 for starttls\)"),
    ({"host": "imap.example.com", "user": "u", "security": "none"}, "only allowed to a loopback address"),
    ({"host": "imap.example.com", "user": "u", "folder": "INBOX", "processed_folder": "INBOX"}, "must differ"),
    ({"host": "imap.example.com", "user": "u", "timeout": 0}, "field 'timeout' is 0"),
    ({"host": "imap.example.com", "user": "u\nx"}, "field 'user' is 'u\\\\nx'; give one line of text"),
])
def test_mistakes_are_one_line_naming_the_field(raw, match):
    with pytest.raises(UserError, match=match) as exc:
        MailboxConfig.from_mapping(raw, WHERE)
    assert str(exc.value).startswith(WHERE + ": ") and "\n" not in str(exc.value)


def test_clear_text_to_loopback_is_allowed():
    assert MailboxConfig.from_mapping({"host": "127.0.0.1", "user": "u", "security": "none"}, WHERE).port == 143
