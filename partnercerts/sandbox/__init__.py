"""The embedded default's stand-in for PSA: the sandbox authority (signs CSRs) and the sandbox API.

`Authority` is imported on first use: it loads cryptography, which `status` and a no-op `rotate`
never need, while the background server's supervisor (`daemon`) loads only the standard library.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .authority import Authority

__all__ = ["Authority"]


def __getattr__(name: str):
    if name == "Authority":
        from .authority import Authority
        return Authority
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
