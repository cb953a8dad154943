"""A task calls Oktopost for its flow's account: that account's client and budget, whichever tenant the
flow is; a flow whose account this worker does not know waits, parked, for a worker that knows it, and
fails once no worker does; one account's pause ends only that account's flows."""

from __future__ import annotations

import time
from typing import NoReturn

import fakeredis
import httpx

from tests.support.shim import RecordingEnqueuer
from tests.support.work import FAST, PROFILE, TOKEN
from worker.config.tenants import OktopostAccount
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.tasks.leases import LeaseKeeper
from worker.tasks.sweeper import sweep_once
from worker.tasks.work import TaskContext, TaskOutcome, verify_flow
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstream, Upstreams
from worker.upstream.parking import STRANDED_MARGIN_SECONDS, STRANDED_SECONDS, Unparker


def two_accounts(seen: list[str], store: FlowStore | None = None, extra: str = "") -> TaskContext:
    """A worker's context of the accounts acme-account and globex-account (and `extra`), on `store` (a
    new one when None)."""
    if store is None:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        store = FlowStore(client, RedisNames("t"), Lifetimes(flow_ttl=60, token_ttl=30, lease=5))
    client, names = store.redis, store.names

    def upstream(account_id: str) -> Upstream[OktopostClient]:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(f"{account_id}@{request.url.host}")
            return httpx.Response(200, json=PROFILE)

        transport = httpx.MockTransport(answer)
        oktopost = OktopostClient(f"https://{account_id}.test", account_id, "key", transport=transport)
        return Upstream(account_id, oktopost, UpstreamBudget(client, names.account(account_id), 1000, 1.0))

    accounts = ["acme-account", "globex-account", *([extra] if extra else [])]
    upstreams = Upstreams({}, _unused, _unused, [upstream(account) for account in accounts])
    return TaskContext(store, upstreams, FAST, WorkerMetrics(client, "t:metrics"), LeaseKeeper(store))


def _unused(_: OktopostAccount) -> NoReturn:
    raise AssertionError("every configured account is given")


def claimed(context: TaskContext, flow_id: str, tenant: str, account: str) -> str:
    flow = context.store.create(flow_id, "LinkedIn", "profile", None, None, tenant=tenant, account=account)
    assert context.store.claim_callback(flow, f"{TOKEN}{flow_id}").done
    return flow_id


def test_each_flow_is_verified_on_its_own_account() -> None:
    seen: list[str] = []
    context = two_accounts(seen)
    acme = claimed(context, "flow-acme-1", "acme", "acme-account")
    globex = claimed(context, "flow-globex-1", "globex", "globex-account")
    assert verify_flow(context, globex) is TaskOutcome.COMPLETED
    assert verify_flow(context, acme) is TaskOutcome.COMPLETED
    assert seen == ["globex-account@globex-account.test", "acme-account@acme-account.test"]
    # each account's window counted its own call
    for budget in context.upstreams.budgets():
        assert context.store.redis.zcard(budget.names.budget_window) == 1
    assert [event["tenant"] for event in context.store.events(acme)] == ["acme"] * 3


def test_a_flow_of_an_account_this_worker_does_not_know_waits_for_a_worker_that_knows_it() -> None:
    """A deploy that adds a tenant: the shim knows its account before this worker does. The flow is
    parked under its account, and a worker started with the account releases it and completes it."""
    seen: list[str] = []
    old = two_accounts(seen)
    flow_id = claimed(old, "flow-initech-1", "initech", "initech-account")
    assert verify_flow(old, flow_id) is TaskOutcome.PARKED
    assert seen == []
    assert old.store.get(flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]
    stranger = Unparker(old.store, RecordingEnqueuer(), lambda _: None, hold=2.0, least_seconds=0.1)
    stranger.release_due()  # not stranded: a worker that knows the account may come
    assert old.store.get(flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]
    # nor once no worker has known it for STRANDED_SECONDS: the workers with the new file may start
    # minutes after the shim, and the flow waits for them while its token lives
    parked_set = old.store.names.account("initech-account").parked_flows
    stale = old.store.clock.now() - STRANDED_SECONDS - 1
    old.store.redis.zadd(old.store.names.parked_accounts, {parked_set: stale})
    stranger.release_due()
    assert old.store.get(flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]
    new = two_accounts(seen, old.store, extra="initech-account")
    enqueuer = RecordingEnqueuer()
    initech = new.upstreams.get("initech-account")
    assert initech is not None
    budget = initech.budget
    knowing = Unparker(
        new.store,
        enqueuer,
        lambda parked: budget if parked == budget.names.parked_flows else None,
        hold=2.0,
        least_seconds=0.1,
    )
    deadline = time.monotonic() + 3
    while not enqueuer.enqueued and time.monotonic() < deadline:  # due a second after it parked
        knowing.release_due()
        time.sleep(0.05)
    assert [queued for queued, _ in enqueuer.enqueued] == [flow_id]
    assert verify_flow(new, flow_id) is TaskOutcome.COMPLETED
    assert seen == ["initech-account@initech-account.test"]


def test_a_flow_whose_account_no_worker_knows_fails_once_stranded_near_its_deadline() -> None:
    seen: list[str] = []
    context = two_accounts(seen)
    store = context.store
    flow_id = claimed(context, "flow-initech-2", "initech", "initech-account")
    assert verify_flow(context, flow_id) is TaskOutcome.PARKED
    parked_set = store.names.account("initech-account").parked_flows
    store.redis.zadd(store.names.parked_accounts, {parked_set: store.clock.now() - STRANDED_SECONDS - 1})
    stranger = Unparker(store, RecordingEnqueuer(), lambda _: None, hold=2.0, least_seconds=0.1)
    stranger.release_due()
    assert store.get(flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]
    # its deadline comes within STRANDED_MARGIN_SECONDS (a parked flow is scored by its deadline)
    store.redis.zadd(parked_set, {flow_id: store.clock.now() + STRANDED_MARGIN_SECONDS - 1})
    stranger.release_due()
    ended = store.events(flow_id)[-1]
    assert ended["type"] == "authorization.failed"
    assert ended["data"]["code"] == "unauthorized"
    assert ended["data"]["message"] == "Oktopost account initech-account is not configured on any worker"
    assert seen == []
    assert store.redis.zcard(store.names.parked_accounts) == 0  # forgotten once none is left


def test_a_pause_ends_only_its_own_accounts_flows() -> None:
    context = two_accounts([])
    acme = claimed(context, "flow-acme-2", "acme", "acme-account")
    globex = claimed(context, "flow-globex-2", "globex", "globex-account")
    budgets = {budget.names.account_id: budget for budget in context.upstreams.budgets()}
    budgets["acme-account"].account.pause(retry_after=120)  # outlives the tokens (30 s)
    accounts = [budget.account for budget in budgets.values()]
    assert sweep_once(context.store, RecordingEnqueuer(), accounts) == (1, 0)
    assert context.store.events(acme)[-1]["data"] == {"stage": "verify", "reason": "upstream_blocked"}
    assert context.store.get(globex).state is FlowState.VERIFYING  # type: ignore[union-attr]
