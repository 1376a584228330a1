"""keymaker.KeyMaker: the keys of a rotation run made ahead in worker processes, in plan order."""
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from partnercerts import keys
from partnercerts.keymaker import KeyMaker
from partnercerts.profile import Subject

SUBJECT = Subject("MZP123456", "FR", "Île-de-France", "Paris", "Free2Move, SAS", "pki@free2move.example")


def check(made, subject=SUBJECT, bits=2048):
    key_pem, csr_pem, key_sha = made
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert key.key_size == bits and csr.is_signature_valid
    assert keys.spki_sha256(csr.public_key()) == keys.spki_sha256(key.public_key()) == key_sha
    assert csr.subject == subject.to_name()
    return key_sha


def test_keys_come_from_the_pool_in_any_order_each_one_fresh():
    wanted = [("MZP123456", f"app{i}", "rsa2048", SUBJECT) for i in range(5)]
    maker = KeyMaker(wanted)
    try:
        seen = {check(maker.take("MZP123456", "app1", "rsa2048", SUBJECT))}  # app0 needed no key after all
        assert maker.pool is not None
        seen.add(check(maker.take("MZP123456", "app3", "rsa2048", SUBJECT)))
        seen.add(check(maker.take("MZP123456", "app4", "rsa2048", SUBJECT)))
        assert len(seen) == 3
        assert maker.pool is None  # the last planned key was taken: the workers are gone
    finally:
        maker.close()


def test_what_the_plan_did_not_foresee_is_made_here():
    other = Subject("MZP654321", "FR", "Île-de-France", "Paris", "Other, SAS", "pki@other.example")
    maker = KeyMaker([("MZP123456", "a", "rsa2048", SUBJECT), ("MZP123456", "b", "rsa2048", SUBJECT)])
    try:
        check(maker.take("MZP654321", "x", "rsa2048", other), other)       # not planned
        check(maker.take("MZP123456", "a", "rsa3072", SUBJECT), bits=3072)  # the key spec changed since the plan
        assert maker.pool is None
    finally:
        maker.close()


def test_one_key_is_made_in_this_process():
    maker = KeyMaker([("MZP123456", "a", "rsa2048", SUBJECT)])
    check(maker.take("MZP123456", "a", "rsa2048", SUBJECT))
    assert maker.pool is None
