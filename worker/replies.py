"""Redis replies as Python text: redis-py answers bytes, or str when a client decodes responses."""

from __future__ import annotations


def text(value: bytes | str | int | float) -> str:
    """A reply (a key, a field, a Lua script's answer) as text: bytes as UTF-8, anything else as str()."""
    return value.decode() if isinstance(value, bytes) else str(value)


def hash_of(flat: list[bytes | str]) -> dict[str, str]:
    """An HGETALL answered through a Lua script (a flat list: field, value, field, value...) as a dict."""
    items = iter(flat)
    return {text(field): text(value) for field, value in zip(items, items, strict=True)}
