"""partnercerts tasks: `scripts/inv --list` shows them, `scripts/inv --help TASK` explains one.

The product's namespace (also the installed `partnercerts` command) plus the development tasks of this checkout.
"""
from devtools.tasks import bench, chaos, dev, soak
from partnercerts.tasks import namespace

ns = namespace(dev.test, chaos.chaos, bench.bench, soak.soak)
