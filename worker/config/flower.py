"""Flower started without authentication is refused unless it listens on loopback only.

Anyone who reaches Flower can shut the workers down and read every task. `celery -A worker flower` loads
celeryconfig.py, which asks `flower_refusal` before Flower starts: with no Basic auth (FLOWER_BASIC_AUTH or
--basic-auth) and no OAuth (FLOWER_AUTH or --auth), Flower may listen only on a loopback address
(--address, FLOWER_ADDRESS; Flower's own default, every interface, is not one). Flower reads its FLOWER_*
variables before celeryconfig.py reads `.env`: those that only `.env` sets count for nothing here, as
they do for Flower.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from worker.config.tenants import is_loopback


def _option(argv: Sequence[str], flag: str, environ: Mapping[str, str], variable: str) -> str | None:
    """The value of `--flag=value` or `--flag value` in argv, else of the environment's variable."""
    for index, part in enumerate(argv):
        if part.startswith(f"{flag}="):
            return part.split("=", 1)[1]
        if part == flag and index + 1 < len(argv):
            return argv[index + 1]
    return environ.get(variable)


_OPTIONS = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH", "FLOWER_ADDRESS")


def flower_refusal(
    argv: Sequence[str], environ: Mapping[str, str], from_env_file: Collection[str] = ()
) -> str | None:
    """Why Flower must not start as `argv` asks (one line), or None: it is not Flower, it asks for
    authentication, or it listens on loopback only. `from_env_file`: the variables `.env` put into the
    environment, which Flower does not apply."""
    if "flower" not in argv[1:]:
        return None
    unseen = [name for name in _OPTIONS if name in from_env_file]
    environ = {name: value for name, value in environ.items() if name not in unseen}
    if _option(argv, "--basic-auth", environ, "FLOWER_BASIC_AUTH") or _option(
        argv, "--auth", environ, "FLOWER_AUTH"
    ):
        return None
    address = _option(argv, "--address", environ, "FLOWER_ADDRESS") or ""
    if address and is_loopback(address):
        return None
    shown = address or "every interface"
    ignored = f" (Flower does not read .env: its {', '.join(unseen)} there is not applied)" if unseen else ""
    return (
        f"Flower would listen on {shown} without authentication: set FLOWER_BASIC_AUTH "
        f"(user:password) in Flower's environment or --address=127.0.0.1{ignored}"
    )
