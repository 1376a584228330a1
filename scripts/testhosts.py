#!/usr/bin/env python3
"""The SSH test hosts' CLI (up, status, down): runs devtools/testhosts.py, standard library only."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "devtools" / "testhosts.py"), run_name="__main__")
