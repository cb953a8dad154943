"""`oktopost-connect sandbox`: start the local Oktopost stand-in from flags and its own environment."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import urlsplit

from sandbox.accounts import AccountKey, parse_account_key
from sandbox.app import DEFAULT_ACCOUNT_ID, DEFAULT_API_KEY, Sandbox, SandboxConfig
from sandbox.faults import RETRY_AFTER_FORMATS, THROTTLE_SCOPES, FaultConfig, FaultConfigError
from sandbox.httpserver import HttpServer
from sandbox.ratelimit import Rate, parse_rate
from sandbox.refusals import ERROR_SHAPES

PROG = "oktopost-connect sandbox"

# Fault settings and the flags that set them at start-up.
_FAULT_FLAGS = {
    "latency_ms": "--latency-ms",
    "error_rate": "--error-rate",
    "throttle_rate": "--throttle-rate",
    "retry_after_s": "--retry-after",
    "retry_after_format": "--retry-after-format",
    "throttle_scope": "--throttle-scope",
    "timeout_rate": "--timeout-rate",
    "drop_rate": "--drop-rate",
    "malformed_rate": "--malformed-rate",
    "reject_rate": "--reject-rate",
    "invalid_rate": "--invalid-rate",
    "error_shape": "--error-shape",
    "seed": "--seed",
}
_NO_RETRY_AFTER = "none"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every oktopost-connect command's are."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="A local stand-in for Oktopost's social authorization API, with injectable faults. "
        "Accepts the Basic-auth pair OKTOPOST_ACCOUNT_ID / OKTOPOST_API_KEY from its environment "
        f"(default {DEFAULT_ACCOUNT_ID} / {DEFAULT_API_KEY}) and any given with --account.",
    )
    parser.add_argument(
        "--account",
        type=_account_key,
        action="append",
        default=[],
        metavar="ID:KEY",
        help="serve another account beside the environment's, with its own limits (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8090, help="port to listen on, 0 for any (default 8090)"
    )
    parser.add_argument(
        "--token-ttl",
        type=_positive,
        default=300.0,
        metavar="SECONDS",
        help="okt token lifetime after consent (300)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate,
        default=None,
        metavar="N/UNIT",
        help="burst limit like 60/minute (default: off)",
    )
    parser.add_argument(
        "--block-seconds", type=_non_negative, default=900.0, help="block after exceeding the limit (900)"
    )
    parser.add_argument(
        "--daily-limit",
        type=_calls_per_day,
        default=None,
        metavar="N",
        help="calls a day (UTC) per account; past them 429 until midnight UTC (default: off)",
    )
    parser.add_argument(
        "--public-url", type=_base_url, default=None, help="base of RedirectUrl (default: the Host)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log each request to stderr (tokens redacted)"
    )
    _add_fault_flags(parser)
    return parser


def _add_fault_flags(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("faults on /v2/ (also settable at run time: POST /_sandbox/faults)")
    faults.add_argument("--latency-ms", type=float, help="delay before each answer")
    faults.add_argument("--error-rate", type=float, help="share of calls answered 503")
    faults.add_argument("--throttle-rate", type=float, help="share of calls answered 429")
    faults.add_argument(
        "--retry-after",
        dest="retry_after_s",
        type=_retry_after,
        metavar="SECONDS",
        help=f"Retry-After of injected 429s (1); {_NO_RETRY_AFTER}: no 429 carries Retry-After",
    )
    faults.add_argument(
        "--retry-after-format", choices=RETRY_AFTER_FORMATS, help="seconds (default) or http-date"
    )
    faults.add_argument(
        "--throttle-scope",
        choices=THROTTLE_SCOPES,
        help="account (default): an injected 429 refuses every call of the account until its Retry-After; "
        "request: only that call",
    )
    faults.add_argument("--timeout-rate", type=float, help="share of calls never answered")
    faults.add_argument(
        "--drop-rate", type=float, help="share of calls whose connection closes after the work"
    )
    faults.add_argument(
        "--malformed-rate", type=float, help="share of calls answered 200 with a non-JSON body"
    )
    faults.add_argument(
        "--reject-rate", type=float, help="share of calls answered 200 with Result false (a refusal)"
    )
    faults.add_argument(
        "--invalid-rate", type=float, help="share of credentials connected with Status invalid"
    )
    faults.add_argument("--error-shape", choices=ERROR_SHAPES, help="form of Errors in refusals (object)")
    faults.add_argument("--seed", type=int, help="seed of the fault dice, for repeatable runs")


def main(argv: Sequence[str]) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, args.host, args.port))


def _config(args: argparse.Namespace) -> SandboxConfig:
    account_id = os.environ.get("OKTOPOST_ACCOUNT_ID") or DEFAULT_ACCOUNT_ID
    api_key = os.environ.get("OKTOPOST_API_KEY") or DEFAULT_API_KEY
    if ":" in account_id:
        raise ValueError("OKTOPOST_ACCOUNT_ID must not contain ':' (it is the user part of Basic auth)")
    chosen = {name: getattr(args, name) for name in _FAULT_FLAGS if getattr(args, name, None) is not None}
    if chosen.get("retry_after_s") == _NO_RETRY_AFTER:
        chosen["retry_after_s"] = None
    try:
        faults = FaultConfig().updated(chosen)
    except FaultConfigError as exc:
        raise ValueError(f"{_FAULT_FLAGS.get(exc.field, exc.field)}: {exc.message}") from None
    return SandboxConfig(
        account_id=account_id,
        api_key=api_key,
        other_accounts=_other_accounts(account_id, args.account),
        token_ttl_s=args.token_ttl,
        rate=args.rate_limit,
        block_s=args.block_seconds,
        daily_limit=args.daily_limit,
        faults=faults,
        public_url=args.public_url,
        access_log=args.access_log,
    )


def _other_accounts(first_id: str, keys: list[AccountKey]) -> tuple[AccountKey, ...]:
    seen = {first_id}
    for key in keys:
        if key.account_id in seen:
            raise ValueError(f"--account: account {key.account_id!r} is given twice")
        seen.add(key.account_id)
    return tuple(keys)


async def _serve(config: SandboxConfig, host: str, port: int) -> int:
    sandbox = Sandbox(config)
    server = HttpServer(sandbox.handle)
    try:
        _, bound_port = await server.start(host, port)
    except OSError as exc:
        print(f"{PROG}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    url_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url_host = f"[{url_host}]" if ":" in url_host else url_host
    sandbox.fallback_base_url = f"http://{url_host}:{bound_port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The key is shown only when it is the well-known default; a real key never reaches a log.
    key_note = f", key {DEFAULT_API_KEY}" if config.api_key == DEFAULT_API_KEY else ""
    accounts = f"account {config.account_id}{key_note}"
    accounts += "".join(f", account {key.account_id}" for key in config.other_accounts)
    print(
        f"sandbox listening on http://{url_host}:{bound_port} ({accounts})",
        flush=True,
    )
    await stop.wait()
    await server.close()
    print("sandbox stopped", flush=True)
    return 0


def _port(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(value)


def _positive(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def _non_negative(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of 0 or more")
    return value


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _calls_per_day(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(value)


def _retry_after(text: str) -> int | str:
    if text.strip().lower() in (_NO_RETRY_AFTER, "null"):
        return _NO_RETRY_AFTER
    return int(_number(text, int))


def _account_key(text: str) -> AccountKey:
    try:
        return parse_account_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> Rate:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _base_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an absolute http(s) URL")
    return text.rstrip("/")
