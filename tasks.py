"""partnercerts tasks: `scripts/inv --list` shows them, `scripts/inv --help TASK` explains one."""
from invoke import Collection

from partnercerts.tasks import bench, chaos, creds, dev, hosts, sandbox, vault

ns = Collection(creds.csr, creds.import_cert, creds.status, creds.p12, creds.account, creds.rotate,
                creds.submit, creds.smtp_password, creds.metrics,
                hosts.deploy, hosts.verify, hosts.rollback, hosts.schedule,
                dev.test, chaos.chaos, bench.bench)
ns.add_collection(Collection.from_module(vault, name="vault"))
ns.add_collection(Collection.from_module(sandbox, name="sandbox"))
ns.configure({"run": {"echo": False}})
