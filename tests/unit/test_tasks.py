"""`inv --list` and `inv --help TASK` are the documentation: every task and argument must say something."""
import tasks


def all_tasks(coll, prefix=""):
    for name, t in coll.tasks.items():
        yield prefix + name, t
    for name, sub in coll.collections.items():
        yield from all_tasks(sub, prefix + name + ".")


def test_every_task_has_a_summary_and_help_for_every_argument():
    seen = dict(all_tasks(tasks.ns))
    assert {"csr", "import-cert", "status", "p12", "account", "rotate", "test",
            "vault.up", "vault.down", "vault.status", "vault.bootstrap"} <= set(seen)
    for name, t in seen.items():
        assert t.__doc__ and t.__doc__.strip().splitlines()[0].endswith("."), name
        for arg in t.get_arguments():
            assert arg.help, f"{name} --{arg.name} has no help"
