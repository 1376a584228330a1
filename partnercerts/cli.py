"""The `partnercerts` command: the product's Invoke namespace, as `scripts/inv` has it minus the development tasks
(a plain `status` runs without Invoke: see partnercerts.quick)."""
import sys

from . import __version__, quick


def main() -> None:
    quick.tune_gc()
    code = quick.run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from invoke import Program

    from .tasks import ns
    Program(namespace=ns, name="partnercerts", binary="partnercerts", version=__version__).run()
