"""A plain `status` runs without Invoke (partnercerts.quick, what scripts/inv execs): against a real OpenBao, every
command line prints exactly what Invoke's run of the same task prints, with the same exit code, errors included;
the ones it does not read itself go to Invoke."""
import os
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


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["status", "-j"]])
def test_a_reader_that_went_away_ends_status_quietly_with_the_shell_s_status(world, args):
    """`status | head`: the reader closes the pipe; the command stops without a word and exits 141 (128 +
    SIGPIPE, what the shell shows for a tool stopped by it), through Invoke (`-j`) as without."""
    for cmd in (INV, INVOKE):
        r, w = os.pipe()
        os.close(r)  # gone before status writes its first byte
        try:
            p = subprocess.run([*cmd, *args], env=world.env, stdout=w, stderr=subprocess.PIPE, text=True,
                               timeout=120, check=False)
        finally:
            os.close(w)
        assert (p.returncode, p.stderr) == (141, ""), (cmd, args, p.stderr)


def test_a_vault_that_does_not_answer_reads_the_same(world):
    env = {**world.env, "VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "PARTNERCERTS_VAULT_RETRY_SECONDS": "1"}
    quick, invoke = run(INV, ["status"], env), run(INVOKE, ["status"], env)
    assert quick.rc != 0 and quick.err.startswith("error: ") and quick.err.count("\n") == 1
    assert (quick.rc, quick.out, quick.err) == (invoke.rc, invoke.out, invoke.err)


def test_only_a_plain_status_skips_invoke_and_hvac(world):
    """Invoke, hvac and requests are not imported by a plain status."""
    def imported(args):
        p = run(INV, args, world.env, importtime=True)
        assert p.rc == 0, p.err[-2000:]
        return {m.group(1) for m in re.finditer(r"\|\s+([\w.]+)$", p.err, re.M)}
    # hvac and requests are loaded lazily (partnercerts._lazy): what shows whether they ran is their submodules.
    heavy = {"hvac.v1", "requests", "urllib3", "cryptography"}
    assert not ({"invoke"} | heavy) & imported(["status", "--json"])  # read over the pipelined reader alone
    assert "invoke" in imported(["status", "-j"]) and "invoke" in imported(["--list"])
    # A command that writes makes its hvac client; so does a status the reader cannot serve (a proxy is set).
    assert "hvac.v1" in imported(["metrics"])
    p = run(INV, ["status", "--json"], {**world.env, "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"},
            importtime=True)
    assert p.rc == 0 and re.search(r"\|\s+hvac\.v1$", p.err, re.M), p.err[-2000:]
    assert p.out == run(INV, ["status", "--json"], world.env).out  # through hvac or not: the same rows
