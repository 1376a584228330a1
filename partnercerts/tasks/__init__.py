"""Invoke namespaces: thin wrappers over the core; composed in the root tasks.py."""
