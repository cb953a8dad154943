"""A task calls Oktopost for its flow's account: that account's client and budget, whichever tenant the
flow is; a flow whose account has left the configuration fails at once instead of waiting out its token;
one account's pause ends only that account's flows."""

from __future__ import annotations

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


def two_accounts(seen: list[str]) -> TaskContext:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    names = RedisNames("t")
    store = FlowStore(client, names, Lifetimes(flow_ttl=60, token_ttl=30, lease=5))

    def upstream(account_id: str) -> Upstream[OktopostClient]:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(f"{account_id}@{request.url.host}")
            return httpx.Response(200, json=PROFILE)

        transport = httpx.MockTransport(answer)
        oktopost = OktopostClient(f"https://{account_id}.test", account_id, "key", transport=transport)
        return Upstream(account_id, oktopost, UpstreamBudget(client, names.account(account_id), 1000, 1.0))

    upstreams = Upstreams({}, _unused, _unused, [upstream("acme-account"), upstream("globex-account")])
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


def test_a_flow_whose_account_left_the_configuration_fails_at_once() -> None:
    seen: list[str] = []
    context = two_accounts(seen)
    flow_id = claimed(context, "flow-initech-1", "initech", "initech-account")
    assert verify_flow(context, flow_id) is TaskOutcome.FAILED
    ended = context.store.events(flow_id)[-1]
    assert ended["type"] == "authorization.failed"
    assert ended["data"]["code"] == "unauthorized"
    assert seen == []


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
