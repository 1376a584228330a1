"""Invoke namespaces, thin wrappers over the core; `ns` is the product's namespace (the `partnercerts` command).

The root tasks.py of a checkout adds the development tasks (test, chaos, bench) to it. Invoke is imported when
the namespace is asked for, not with this package: `status` runs without it (see partnercerts.quick).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from invoke import Collection


def namespace(*extra) -> Collection:
    """A fresh product namespace: every task a user runs, plus `extra` tasks (the checkout's development ones)."""
    from invoke import Collection

    from . import creds, hosts, sandbox, vault
    ns = Collection(*extra, creds.csr, creds.import_cert, creds.status, creds.p12, creds.account, creds.rotate,
                    creds.submit, creds.smtp_password, creds.metrics, creds.replies, creds.mailbox_password,
                    creds.rekey, creds.history,
                    hosts.deploy, hosts.verify, hosts.rollback, hosts.recover, hosts.schedule)
    ns.add_collection(Collection.from_module(vault, name="vault"))
    ns.add_collection(Collection.from_module(sandbox, name="sandbox"))
    ns.configure({"run": {"echo": False}})
    return ns


def __getattr__(name: str):
    if name == "ns":  # the product's namespace, built once on first use
        globals()["ns"] = built = namespace()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
