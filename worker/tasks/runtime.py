"""The worker process's shared objects, built once from settings: Redis, the flow store, each Oktopost
account's client (one pooled client per account and process) and budget, and the task context that
holds them."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from worker.config.settings import Settings, get_settings
from worker.config.tenants import OktopostAccount
from worker.connections.checks import CheckSettings, ConnectionChecker
from worker.connections.deletion import ConnectionDeleter
from worker.connections.records import ConnectionStore
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.flows.transition import ReplicaWait
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import AsyncOktopostClient, OktopostClient, timeout_from_settings
from worker.tasks.leases import LeaseKeeper
from worker.tasks.work import TaskContext
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstream, Upstreams
from worker.upstream.retry import RetryPolicy
from worker.webhooks.delivery import Courier, Slots
from worker.webhooks.endpoints import WebhookStore

_lock = threading.Lock()


def lifetimes(settings: Settings) -> Lifetimes:
    return Lifetimes(
        flow_ttl=settings.flow_ttl_seconds,
        token_ttl=settings.token_ttl_seconds,
        retention=settings.flow_retention_seconds,
        # a flow whose worker stops renewing its lease for this long is taken up again: within a quarter of
        # the token's life (the promise to users), less room for the sweeper's tick and the task's start
        lease=max(1.5, 0.8 * settings.token_ttl_seconds / 4),
        # queued work is not requeued early: under load a task may wait its turn in the broker
        queued_lease=max(4.0, settings.token_ttl_seconds / 2),
    )


def redis_client(settings: Settings, *, answer_within: float | None = None) -> redis.Redis:
    """The process's Redis connections (to the primary its sentinels name, with REDIS_SENTINELS).

    `answer_within` is for the shim: a command with no answer in that many seconds fails at once, so a
    request gets its 503 instead of hanging on a stopped or unreachable Redis (redis-py's default retries
    timeouts three times with backoff: 20 s and more per request). Only a broken connection is retried,
    once and straight away, since a Redis that restarted leaves the pool's connections dead. The worker
    has no one waiting on it and keeps the patient defaults.
    """
    options: dict[str, Any]
    if answer_within is not None:
        options = {
            "socket_timeout": answer_within,
            "socket_connect_timeout": answer_within,
            "health_check_interval": 10,
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            "max_connections": 64,
        }
    else:
        options = {
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "health_check_interval": 10,
            "retry_on_timeout": True,
            "max_connections": 64,
        }
    if settings.redis_sentinels:
        return sentinel_primary(settings, redis.sentinel.Sentinel, redis.Redis, options)
    return redis.Redis.from_url(settings.redis_url, **options)


def sentinel_primary(
    settings: Settings, sentinel_class: Any, redis_class: Any, options: dict[str, Any]
) -> Any:
    """A client of the primary that REDIS_SENTINEL_MASTER's sentinels name, found again after a failover
    (sync or asyncio, by the classes given); REDIS_URL gives its password, user and database."""
    url = parse_url(settings.redis_url)
    auth = {name: url[name] for name in ("username", "password") if url.get(name)}
    password = settings.redis_sentinel_password
    sentinels = sentinel_class(
        [_host_port(address) for address in settings.redis_sentinels],
        sentinel_kwargs={
            "socket_timeout": options.get("socket_connect_timeout", 2),
            **({"password": password.get_secret_value()} if password else {}),
        },
    )
    return sentinels.master_for(
        settings.redis_sentinel_master, redis_class=redis_class, db=url.get("db", 0), **auth, **options
    )


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@lru_cache(maxsize=1)
def store() -> FlowStore:
    with _lock:
        settings = get_settings()
        return flow_store(settings, redis_client(settings))


def flow_store(settings: Settings, client: redis.Redis, *, refuse_unconfirmed: bool = False) -> FlowStore:
    """Flows that name no Oktopost account (stored before tenants) are the default tenant's account's.
    With REDIS_WAIT_REPLICAS, each transition done waits for that many replicas; one they do not
    confirm in time raises ReplicasUnconfirmed when `refuse_unconfirmed` (the shim's requests), else
    it is logged (a worker's task has no one to answer)."""
    names = RedisNames(settings.channel_prefix)
    confirm = ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms, refuse_unconfirmed)
    return FlowStore(
        client,
        names,
        lifetimes(settings),
        default_account=settings.oktopost_account_id,
        confirm=confirm,
    )


# A worker process sums its metrics and adds them to Redis once a second: a flow's transition carries
# none (eight HINCRBYFLOATs fewer in each), and /metrics is at most about a second behind.
METRICS_FLUSH_SECONDS = 1.0


@lru_cache(maxsize=1)
def worker_metrics() -> WorkerMetrics:
    flow_store = store()
    return WorkerMetrics(flow_store.redis, flow_store.names.worker_metrics, METRICS_FLUSH_SECONDS)


@lru_cache(maxsize=1)
def task_context() -> TaskContext:
    settings = get_settings()
    flow_store = store()
    return TaskContext(
        store=flow_store,
        upstreams=upstreams(),
        policy=retry_policy(settings),
        metrics=worker_metrics(),
        leases=LeaseKeeper(flow_store),
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(max_attempt_seconds=settings.oktopost_timeout_seconds)


@lru_cache(maxsize=1)
def upstreams() -> Upstreams[OktopostClient]:
    """The worker's client and budget of each configured Oktopost account."""
    settings, client = get_settings(), store().redis
    return Upstreams(
        settings.tenants.accounts,
        lambda account: OktopostClient(
            account.base_url,
            account.account_id,
            account.api_key,
            timeout=timeout_from_settings(settings),
        ),
        lambda account: budget(settings, client, account),
    )


def shim_upstreams(
    settings: Settings, client: redis.Redis, given: list[Upstream[AsyncOktopostClient]] | None = None
) -> Upstreams[AsyncOktopostClient]:
    """The shim's: asyncio clients, for Step 1 (`given`: built by the caller, for their accounts)."""
    return Upstreams(
        settings.tenants.accounts,
        lambda account: AsyncOktopostClient(
            account.base_url,
            account.account_id,
            account.api_key,
            timeout=timeout_from_settings(settings),
        ),
        lambda account: budget(settings, client, account),
        given,
    )


def budget(settings: Settings, client: redis.Redis, account: OktopostAccount) -> UpstreamBudget:
    """One account's budget: its rate and daily limits, under its own Redis names."""
    limit, period = account.rate
    return UpstreamBudget(
        client,
        RedisNames(settings.channel_prefix).account(account.account_id),
        limit,
        period,
        daily_limit=account.daily_limit,
        block_seconds=settings.oktopost_block_seconds,
    )


@lru_cache(maxsize=1)
def webhook_store() -> WebhookStore:
    settings, flow_store = get_settings(), store()
    return WebhookStore.configured(flow_store.redis, flow_store.names, settings)


def configure_delivery_slots(total: int) -> None:
    """How many delivery attempts this process sends at once (set at start-up, from its threads and
    whether it also serves flows)."""
    _delivery_slots.total = max(1, total)
    _delivery_slots.per_tenant = max(1, total * 3 // 4)


_delivery_slots = Slots(total=4, per_tenant=3)


@lru_cache(maxsize=1)
def courier() -> Courier:
    settings = get_settings()
    return Courier(
        webhook_store(),
        worker_metrics(),
        allowed_hosts=settings.webhook_allowed_hosts,
        timeout=settings.webhook_timeout_seconds,
        schedule=settings.webhook_retry_schedule,
        slots=_delivery_slots,
    )


@lru_cache(maxsize=1)
def connection_store() -> ConnectionStore:
    settings, flow_store = get_settings(), store()
    return ConnectionStore(flow_store.redis, flow_store.names, settings.flow_retention_seconds)


@lru_cache(maxsize=1)
def connection_deleter() -> ConnectionDeleter:
    return ConnectionDeleter(connection_store(), upstreams().get)


def connection_checker(settings: Settings) -> ConnectionChecker:
    check = CheckSettings(
        settings.connection_check_seconds,
        settings.connection_check_share,
        call_seconds=settings.oktopost_timeout_seconds,
    )
    return ConnectionChecker(connection_store(), upstreams().get, check)
