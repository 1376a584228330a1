"""partnercerts.quick reads a plain `status` command line itself and leaves every other one to Invoke: the options
it knows are the task's, as Invoke names them."""
import inspect

import pytest

from partnercerts import quick
from partnercerts.tasks import _status, creds


def test_the_quick_options_are_the_status_tasks_own():
    # Invoke names a task's options after its body's parameters, the context first (its get_arguments() would
    # consume the task's help texts: the task list's own test reads them).
    task_names = {"--" + n.replace("_", "-") for n in list(inspect.signature(creds.status.body).parameters)[1:]}
    assert set(quick._options(_status.show)) == task_names == {"--json", "--mzp", "--app"}


@pytest.mark.parametrize("argv, kwargs", [
    ([], {}),
    (["--json"], {"json": True}),
    (["--mzp", "MZP123456"], {"mzp": "MZP123456"}),
    (["--mzp=MZP123456", "--app", "app0", "--json"], {"mzp": "MZP123456", "app": "app0", "json": True}),
    (["--app=", "--mzp", "MZP1"], {"app": "", "mzp": "MZP1"}),
])
def test_a_plain_status_is_read_here(argv, kwargs):
    assert quick.parse(argv, _status.show) == kwargs


@pytest.mark.parametrize("argv", [
    ["-j"], ["--help"], ["-h"], ["--json", "--json"], ["--mzp"], ["--mzp", "--json"], ["--json=yes"],
    ["--mzp", "A", "--mzp", "B"], ["--verbose"], ["deploy"], ["--", "--json"], ["-m", "MZP1"],
])
def test_anything_else_goes_to_invoke(argv):
    assert quick.parse(argv, _status.show) is None


@pytest.mark.parametrize("argv", [[], ["rotate"], ["--list"], ["-e", "status"], ["status", "--help"], ["csr"]])
def test_other_command_lines_are_not_run_here(argv):
    assert quick.run(argv) is None
