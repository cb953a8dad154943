"""The sub-commands of `oktopost-connect`, each a function of its arguments that returns an exit code.

Each imports its component lazily, so `oktopost-connect sandbox` never loads the pipeline and the
pipeline never loads the sandbox.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.embedded_redis import RedisKind
    from worker.config.settings import Settings
    from worker.webhooks.endpoints import WebhookStore


def settings_or_exit() -> Settings:
    from worker.config.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as error:
        raise SystemExit(fail(str(error))) from None


def fail(message: str) -> int:
    print(f"oktopost-connect: {message}", file=sys.stderr)
    return 2


def sandbox(argv: Sequence[str]) -> int:
    from sandbox.cli import main

    return main(argv)


def shim(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="oktopost-connect shim", description="Run the HTTP shim.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=1000,
        help="connections and requests served at once; past it, 503 (default 1000)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        return fail(f"--port must be a port number from 0 to 65535, not {args.port}")
    if args.limit_concurrency < 1:
        return fail("--limit-concurrency must be at least 1")
    settings = settings_or_exit()
    if not settings.tenants.has_keys:
        return fail("invalid setting SHIM_API_KEYS: at least one caller key is required (or TENANTS_FILE)")
    from worker.observing.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    import uvicorn

    from api_shim import serving
    from api_shim.app import create_app

    try:  # bound here, so that an address in use is one line and exit 2, not uvicorn's log and exit 3
        listening = listening_socket(args.host, args.port)
    except OSError as error:
        return fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        server_header=False,
        # h11 rather than httptools even where that is installed: its 16 KiB bound on a request's line
        # and headers is the first of the shim's size limits (api_shim/limits.py); the protocol closes a
        # connection whose request head does not come in time
        http=serving.protocol(settings.shim_header_timeout_seconds),
        h11_max_incomplete_event_size=serving.MAX_HEAD_BYTES,
        limit_concurrency=args.limit_concurrency,
        timeout_graceful_shutdown=5,
    )
    with listening:
        serving.DrainingServer(config).run(sockets=[listening])  # SIGTERM: drains, ends streams, exits 0
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` as uvicorn binds one (address reuse, IPv6 for an address with
    a colon); OSError when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except OSError:
        listening.close()
        raise
    listening.set_inheritable(True)
    return listening


def worker(argv: Sequence[str]) -> int:
    from worker.queueing.names import QUEUE_KINDS, kind_queues

    parser = argparse.ArgumentParser(
        prog="oktopost-connect worker", description="Run a Celery worker (threads pool) for the pipeline."
    )
    parser.add_argument("--concurrency", type=int, default=8, help="threads working on flows (default 8)")
    parser.add_argument("--hostname", "-n", default=None, help="Celery node name (default celery@HOST)")
    parser.add_argument(
        "--serve",
        choices=["both", *QUEUE_KINDS],
        default="both",
        help="the queues served: flows' tasks, webhook deliveries, or both (default both)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        return fail("--concurrency must be at least 1")
    settings = settings_or_exit()
    from worker.observing.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from worker.tasks.celery_app import app

    by_kind = kind_queues(settings.channel_prefix)
    queues = list(by_kind.values()) if args.serve == "both" else [by_kind[args.serve]]
    options = ["worker", "--pool", "threads", "--concurrency", str(args.concurrency), "-Q", ",".join(queues)]
    options += ["--loglevel", settings.log_level, "--without-gossip", "--without-mingle"]
    if args.hostname:
        options += ["--hostname", args.hostname]
    app.worker_main(options)
    return 0


def watch(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oktopost-connect watch",
        description="Print a flow's events: its stored history, then live ones, until a terminal event. "
        "A lost connection to Redis is resumed where it was, without a gap or a repeat.",
    )
    parser.add_argument("flow_id")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds (without it, waits through a Redis outage)",
    )
    args = parser.parse_args(argv)
    if args.timeout is not None and not args.timeout > 0:
        return fail(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    settings = settings_or_exit()
    import redis

    from worker.events import TERMINAL_TYPES
    from worker.follow.subscribe import follow_flow
    from worker.keys import RedisNames

    names = RedisNames(settings.channel_prefix)
    client = _redis(settings, socket_connect_timeout=3)
    where = settings.redis_url.split("@")[-1]
    try:
        # a flow's stream holds its events from the first on and lives as long as the flow: reading its
        # length is all a subscribing service's Redis user may do (docs/design.md, the `subscriber` user)
        if not client.xlen(names.flow_stream(args.flow_id)):
            return fail(f"no flow {args.flow_id!r} in {settings.channel_prefix}")
        terminal = False
        for event in follow_flow(client, args.flow_id, settings.channel_prefix, timeout=args.timeout):
            print(json.dumps(event), flush=True)
            terminal = event["type"] in TERMINAL_TYPES
    except redis.exceptions.AuthenticationError:
        return fail(f"Redis at REDIS_URL ({where}) refused its user name or password")
    except redis.exceptions.ConnectionError:
        return fail(f"cannot reach Redis at REDIS_URL ({where})")
    except redis.exceptions.NoPermissionError as refused:
        return fail(f"REDIS_URL's Redis user may not follow events ({refused})")
    except KeyboardInterrupt:
        return 130
    return 0 if terminal else 1


def _redis_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        choices=["auto", "external", "redis-server", "fakeredis"],
        default="auto",
        help="auto (default): REDIS_URL if it answers PING, else a private redis-server from PATH, "
        "else fakeredis's server; the others force one (so does OKC_EMBEDDED_REDIS=KIND)",
    )


def _redis_preference(option: str) -> RedisKind | None:
    """The Redis kind forced by --redis or OKC_EMBEDDED_REDIS, None for auto; exit 2 on a bad value."""
    import os

    from cli.embedded_redis import EmbeddedRedisError, redis_preference

    try:
        return redis_preference(option, os.environ)
    except EmbeddedRedisError as error:
        raise SystemExit(fail(str(error))) from None


def up(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oktopost-connect up",
        description="Run shim + worker (+ sandbox when OKTOPOST_API_KEY is not set, + an embedded Redis when "
        "none answers) in the foreground; print the URLs and the dev API key; Ctrl-C stops everything.",
    )
    parser.add_argument("--port", type=int, default=8000, help="port of the shim (default 8000)")
    parser.add_argument("--sandbox-port", type=int, default=8090, help="port of the sandbox (default 8090)")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    _redis_choice(parser)
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        return fail("--concurrency must be at least 1")
    redis = _redis_preference(args.redis)
    from cli.launcher import run_up
    from cli.stack import StackOptions

    options = StackOptions(args.port, args.sandbox_port, args.concurrency, redis=redis)
    return run_up(options)


def demo(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oktopost-connect demo",
        description="Start the stack on free ports (always with the sandbox), drive a profile and a page "
        "flow end to end over HTTP, print each event a Redis subscriber receives; exit 0 when both complete.",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the flows get (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    _redis_choice(parser)
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.concurrency < 1:
        return fail("--timeout must be positive and --concurrency at least 1")
    redis = _redis_preference(args.redis)
    from cli.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(timeout=args.timeout, redis=redis, concurrency=args.concurrency))


def webhooks(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oktopost-connect webhooks",
        description="For operators: list the webhook endpoints (no secrets) or replay events to one.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every tenant's endpoints, with their deliveries' standing")
    replay = sub.add_parser("replay", help="send an endpoint every event of its tenant since a moment again")
    replay.add_argument("endpoint_id")
    replay.add_argument("--since", required=True, help="ISO 8601 time, e.g. 2026-11-28T14:00:00Z")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    import redis

    from worker.events import utc_timestamp
    from worker.keys import RedisNames
    from worker.webhooks.endpoints import WebhookStore

    client = _redis(settings, socket_connect_timeout=3, socket_timeout=10)
    store = WebhookStore.configured(client, RedisNames(settings.channel_prefix), settings)
    try:
        if args.action == "list":
            return _list_webhooks(store)
        since = _moment(args.since)
        if since is None:
            return fail(f"--since: not an ISO 8601 time with its offset: {args.since!r}")
        endpoint = store.endpoint(args.endpoint_id)
        if endpoint is None:
            return fail(f"no webhook {args.endpoint_id!r} in {settings.channel_prefix}")
        from worker.tasks.celery_tasks import enqueuer

        replayed = store.replay(endpoint, since, enqueuer(settings.store_as_broker_url).enqueue_delivery)
        answer: dict[str, object] = {"id": endpoint.id, "queued": replayed.queued}
        if replayed.next_since is not None:  # the window was full: go on from there
            answer["next_since"] = utc_timestamp(replayed.next_since)
        print(json.dumps(answer))
        return 0
    except redis.exceptions.ConnectionError:
        return fail(f"cannot reach Redis at REDIS_URL ({settings.redis_url.split('@')[-1]})")
    finally:
        client.close()


def _redis(settings: Settings, **options: float) -> Any:
    """A client of the pipeline's Redis: REDIS_URL's, or the primary REDIS_SENTINELS name."""
    import redis

    if settings.redis_sentinels:
        import redis.sentinel

        from worker.tasks.runtime import sentinel_primary

        return sentinel_primary(settings, redis.sentinel.Sentinel, redis.Redis, dict(options))
    return redis.Redis.from_url(settings.redis_url, **options)


def _list_webhooks(store: WebhookStore) -> int:
    from worker.events import utc_timestamp

    for tenant in store.tenants_with_endpoints():
        for endpoint in store.endpoints(tenant):
            statuses = Counter(delivery.status for delivery in store.deliveries(endpoint.id))
            line = {
                "id": endpoint.id,
                "tenant": tenant,
                "url": endpoint.url,
                "events": list(endpoint.events),
                "created_at": utc_timestamp(endpoint.created_at),
                "status": "enabled" if endpoint.enabled else "disabled",
                "recent_deliveries": dict(statuses),
            }
            print(json.dumps(line))
    return 0


def _moment(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 time that says its offset (Z or +hh:mm); None otherwise."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None
