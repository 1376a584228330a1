"""The `partnercerts` command: the product's Invoke namespace, as `scripts/inv` has it minus the development tasks."""
from invoke import Program

from . import __version__
from .tasks import ns

program = Program(namespace=ns, name="partnercerts", binary="partnercerts", version=__version__)


def main() -> None:
    program.run()
