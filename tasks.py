"""partnercerts tasks: `scripts/inv --list` shows them, `scripts/inv --help TASK` explains one."""
from invoke import Collection

from partnercerts.tasks import creds, dev, vault

ns = Collection(creds.csr, creds.import_cert, creds.status, creds.p12, creds.account, creds.rotate, dev.test)
ns.add_collection(Collection.from_module(vault, name="vault"))
ns.configure({"run": {"echo": False}})
