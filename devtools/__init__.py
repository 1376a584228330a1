"""Development tools of this checkout, never installed with the package: the benchmark, the throwaway
dev servers (OpenBao dev mode, namespaced SSH test hosts) and the test, chaos and bench tasks."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
