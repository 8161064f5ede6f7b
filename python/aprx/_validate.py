"""Checks of values that come from users, JSON files and manifests."""

from __future__ import annotations

from typing import Any, Optional, TypeGuard


def is_int(v: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> TypeGuard[int]:
    """True when ``v`` is an ``int`` (a ``bool`` is not one, though Python says it is) in
    ``lo..=hi``; a bound left out is no bound."""
    return (
        isinstance(v, int)
        and not isinstance(v, bool)
        and (lo is None or v >= lo)
        and (hi is None or v <= hi)
    )
