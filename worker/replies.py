"""Redis replies as Python text: redis-py answers bytes, or str when a client decodes responses."""

from __future__ import annotations


def text(value: bytes | str | int | float) -> str:
    """A reply (a key, a field, a Lua script's answer) as text: bytes as UTF-8, anything else as str()."""
    return value.decode() if isinstance(value, bytes) else str(value)
