"""Flower started without authentication is refused unless it listens on loopback only.

Anyone who reaches Flower can shut the workers down and read every task. `celery -A worker flower` loads
celeryconfig.py, which asks `flower_refusal` before Flower starts: with no Basic auth (FLOWER_BASIC_AUTH or
--basic-auth) and no OAuth (FLOWER_AUTH or --auth), Flower may listen only on a loopback address
(--address, FLOWER_ADDRESS; Flower's own default, every interface, is not one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.config.tenants import is_loopback


def _option(argv: Sequence[str], flag: str, environ: Mapping[str, str], variable: str) -> str | None:
    """The value of `--flag=value` or `--flag value` in argv, else of the environment's variable."""
    for index, part in enumerate(argv):
        if part.startswith(f"{flag}="):
            return part.split("=", 1)[1]
        if part == flag and index + 1 < len(argv):
            return argv[index + 1]
    return environ.get(variable)


def flower_refusal(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Why Flower must not start as `argv` asks (one line), or None: it is not Flower, it asks for
    authentication, or it listens on loopback only."""
    if "flower" not in argv[1:]:
        return None
    if _option(argv, "--basic-auth", environ, "FLOWER_BASIC_AUTH") or _option(
        argv, "--auth", environ, "FLOWER_AUTH"
    ):
        return None
    address = _option(argv, "--address", environ, "FLOWER_ADDRESS") or ""
    if address and is_loopback(address):
        return None
    shown = address or "every interface"
    return (
        f"Flower would listen on {shown} without authentication: set FLOWER_BASIC_AUTH "
        "(user:password) or --address=127.0.0.1"
    )
