"""The development tasks (test, chaos, bench): they need this checkout, so only the root tasks.py has them."""
