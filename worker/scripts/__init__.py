"""Every Lua script of the pipeline: one `.lua` file each, beside this loader, and loaded only here.

Each file's header documents its KEYS, ARGV and return values. A state change that must be atomic (a
flow's transition with its event, a lease, a budget slot) is one script, never a read-modify-write in
Python. Functions that several steps share live in a file of their own, pulled in by a line
`--! include NAME` (replaced by `NAME.lua`'s text), so each step is still sent as one script.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script

_INCLUDE = re.compile(r"^--! include ([a-z_]+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of `{name}.lua`, with the files it includes in place of their `--! include` lines."""
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda line: source(line.group(1)), text)


def register(client: Any, name: str) -> Script:
    """`{name}.lua` registered on a Redis client (sent by EVALSHA, loaded again after a Redis restart)."""
    return client.register_script(source(name))
