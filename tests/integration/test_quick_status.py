"""A plain `status` runs without Invoke (partnercerts.quick, what scripts/inv execs): against a real OpenBao, every
command line prints exactly what Invoke's run of the same task prints, with the same exit code, errors included;
the ones it does not read itself go to Invoke."""
import re
import subprocess

import pytest

from tests.conftest import INV, INVOKE, Result, free_port

MZP = "MZP654321"
LINES = [
    ["status"], ["status", "--json"], ["status", "--mzp", MZP, "--app", "fleet"], [f"--mzp={MZP}", "--json"],
    ["--app=big"], ["--mzp", "MZP000001"], ["--mzp", MZP, "--app", "nope", "--json"], ["-j"], ["--help"],
    ["--mzp"], ["--json", "--json"],
]


def run(cmd, args, env, importtime=False) -> Result:
    argv = [cmd[0], *(["-X", "importtime"] if importtime else []), *cmd[1:], *args]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def world(cli):
    cli("rotate", "--no-deploy")  # both credentials issued by the sandbox authority
    cli("csr", "--mzp", MZP, "--app", "fleet", "--force")  # a pending key: its own column and a note
    return cli


def test_status_without_invoke_prints_what_invoke_prints(world):
    env = world.env
    for line in LINES:
        args = line if line[0] == "status" else ["status", *line]
        quick, invoke = run(INV, args, env), run(INVOKE, args, env)
        assert (quick.rc, quick.out, quick.err) == (invoke.rc, invoke.out, invoke.err), \
            args
        world.assert_clean(quick)
    table = run(INV, ["status"], env)
    assert table.rc == 0 and f"{MZP}  fleet" in table.out and f"{MZP}  big" in table.out
    assert run(INV, ["status", "--mzp", "MZP000001"], env).rc == 2


def test_a_vault_that_does_not_answer_reads_the_same(world):
    env = {**world.env, "VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "PARTNERCERTS_VAULT_RETRY_SECONDS": "1"}
    quick, invoke = run(INV, ["status"], env), run(INVOKE, ["status"], env)
    assert quick.rc != 0 and quick.err.startswith("error: ") and quick.err.count("\n") == 1
    assert (quick.rc, quick.out, quick.err) == (invoke.rc, invoke.out, invoke.err)


def test_only_a_plain_status_skips_invoke(world):
    def imports_invoke(args):
        p = run(INV, args, world.env, importtime=True)
        return any(re.search(r"\|\s+invoke$", ln) for ln in p.err.splitlines())
    assert not imports_invoke(["status", "--json"])
    assert imports_invoke(["status", "-j"]) and imports_invoke(["--list"])
