"""`status` without Invoke: the command dashboards, shell loops and people run most, started in half the time.

Importing Invoke costs about 75 ms (it loads unittest.mock, asyncio and importlib.metadata), a third of a bare
`status`. So `scripts/inv` and the `partnercerts` command come here first: a `status` command line made only of
the task's own long options (`--json`, `--mzp M` or `--mzp=M`, `--app A`, each at most once) runs the task's
body (`partnercerts.tasks._status.show`) directly, and reports errors exactly as the task does under Invoke
(`_common.last_word`). Every other command line, including any `status` this does not read exactly (short
options, `--help`, a flag given twice or without its value), goes to Invoke unchanged. A test runs both ways on
the same command lines and compares what they print and their exit codes.

    python -m partnercerts.quick --search-root DIR ARGS...   what scripts/inv runs (DIR: the checkout's tasks.py)
"""
from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Callable


def _options(fn: Callable) -> dict[str, str]:
    """The long options of a task body, as Invoke names them from its signature: `--name` (underscores as
    dashes) to the parameter, booleans as flags."""
    return {"--" + name.replace("_", "-"): name for name in inspect.signature(fn).parameters}


def parse(argv: list[str], fn: Callable) -> dict | None:
    """The keyword arguments of `fn` for `argv` (the words after the task's name), or None when Invoke must read
    them: anything but the long options of `fn`, each once, with the value a non-flag option needs."""
    options = _options(fn)
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()}
    got: dict = {}
    words = iter(argv)
    for word in words:
        flag, eq, value = word.partition("=")
        name = options.get(flag)
        if name is None or name in got:
            return None
        if isinstance(defaults[name], bool):
            if eq:
                return None  # `--json=...`: Invoke's to read
            got[name] = True
            continue
        if not eq:
            following = next(words, None)
            if following is None or following.startswith("-"):
                return None
            value = following
        got[name] = value
    return got


def run(argv: list[str]) -> int | None:
    """Run `argv` (the words after the program's name) here if it is a plain `status`: its exit code; None when
    Invoke must run it."""
    if not argv or argv[0] != "status":
        return None
    from .tasks import _status
    kwargs = parse(argv[1:], _status.show)
    if kwargs is None:
        return None
    from .tasks._common import last_word, reader_gone
    try:
        _status.show(**kwargs)
        sys.stdout.flush()  # here, where a reader that went away is told apart
    except KeyboardInterrupt:
        return 1  # as Invoke: quietly, exit 1
    except BrokenPipeError:
        return reader_gone()
    except Exception as exc:  # noqa: BLE001 - worded as the task words it under Invoke
        message, code = last_word(exc, "status")
        print(message, file=sys.stderr)
        return code
    return 0


def tune_gc() -> None:
    """Run the cyclic garbage collector far less often, as mypy does. A command lives a second or so and makes
    hundreds of thousands of small objects that reference counting frees (the inventory's YAML nodes, an index
    per credential); at CPython's default threshold (700 allocations) the collector ran every few thousand of
    them and took about a tenth of `status` over 10,000 credentials, for no memory it gave back."""
    gc.set_threshold(200_000, 30, 30)


def main(argv: list[str] | None = None) -> None:
    """`python -m partnercerts.quick --search-root DIR ARGS...`: ARGS here or through Invoke with that root."""
    tune_gc()
    argv = sys.argv[1:] if argv is None else argv
    root: list[str] = []
    if argv[:1] == ["--search-root"] and len(argv) >= 2:
        root, argv = argv[:2], argv[2:]
    code = run(argv)
    if code is not None:
        sys.exit(code)
    from invoke.main import program
    program.run(["invoke", *root, *argv])


if __name__ == "__main__":
    main()
