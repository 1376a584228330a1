"""Invoke namespaces, thin wrappers over the core; `ns` is the product's namespace (the `partnercerts` command).

The root tasks.py of a checkout adds the development tasks (test, chaos, bench) to it.
"""
from invoke import Collection

from . import creds, hosts, sandbox, vault


def namespace(*extra) -> Collection:
    """A fresh product namespace: every task a user runs, plus `extra` tasks (the checkout's development ones)."""
    ns = Collection(*extra, creds.csr, creds.import_cert, creds.status, creds.p12, creds.account, creds.rotate,
                    creds.submit, creds.smtp_password, creds.metrics, creds.replies, creds.mailbox_password,
                    creds.rekey, creds.history,
                    hosts.deploy, hosts.verify, hosts.rollback, hosts.recover, hosts.schedule)
    ns.add_collection(Collection.from_module(vault, name="vault"))
    ns.add_collection(Collection.from_module(sandbox, name="sandbox"))
    ns.configure({"run": {"echo": False}})
    return ns


ns = namespace()
