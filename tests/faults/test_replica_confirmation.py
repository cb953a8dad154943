"""REDIS_WAIT_REPLICAS on a real primary and replica: a step the replica did not confirm is answered 503,
and so is its repeat, which finds that step on the primary alone; once the replica has it, the repeat is
answered from it (a repeated callback's 303, a selection's 409).

The replica is paused (SIGSTOP) so that it confirms nothing; the step's write stays on the primary, as it
does when a failover is about to lose it: a repeat acknowledged from it then would be lost with it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from api_shim import rules
from cli.processes import RedisService, start_redis_server
from tests.support.shim import OFFERS
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.flows.transition import ReplicasUnconfirmed, ReplicaWait
from worker.keys import RedisNames

pytestmark = [pytest.mark.integration]

NAMES = RedisNames("okc-replica-test")
TOKENS = (
    "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883",
    "77ac6053d81978.11578446867279657339b29ad2799b11ca4ff001",
)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisService, RedisService]]:
    primary = start_redis_server("--repl-diskless-sync-delay", "0")
    replica = None
    try:
        replica = start_redis_server("--replicaof", "127.0.0.1", str(primary.port))
        with redis.Redis.from_url(replica.url) as client:
            deadline = time.monotonic() + 20
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        yield primary, replica
    finally:
        if replica is not None:
            os.kill(_pid(replica), signal.SIGCONT)  # a paused server cannot stop
            replica.stop(timeout=5)
        primary.stop(timeout=5)


def _pid(server: RedisService) -> int:
    assert server.child is not None
    return server.child.pid


@contextmanager
def paused(replica: RedisService, primary: RedisService) -> Iterator[None]:
    """The replica paused, then going on until it has caught up with the primary."""
    os.kill(_pid(replica), signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(_pid(replica), signal.SIGCONT)
    with redis.Redis.from_url(primary.url) as leader, redis.Redis.from_url(replica.url) as follower:
        deadline = time.monotonic() + 10
        while (
            follower.info("replication")["slave_repl_offset"]
            < leader.info("replication")["master_repl_offset"]
        ):
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.02)


def stores(primary: RedisService) -> tuple[FlowStore, FlowStore]:
    """The shim's store, waiting for one replica, and one that sets flows up without waiting."""
    client: Any = redis.Redis.from_url(primary.url)
    waiting = FlowStore(client, NAMES, Lifetimes(), confirm=ReplicaWait(1, 200, refuse=True))
    return waiting, FlowStore(client, NAMES, Lifetimes())


def test_a_repeated_callback_is_not_acknowledged_before_the_replica_has_its_claim(
    servers: tuple[RedisService, RedisService],
) -> None:
    primary, replica = servers
    shim, setup = stores(primary)
    flow = setup.create("a" * 40, "LinkedIn", "profile", None, None)

    def callback() -> tuple[Any, Any]:
        return shim.claim_on_read(
            flow.flow_id, TOKENS[0], None, browser_fp="", start_fp="", tenants_requiring_start=()
        )

    with paused(replica, primary):
        with pytest.raises(ReplicasUnconfirmed):
            callback()  # 503: the claim is on the primary alone
        assert setup.get(flow.flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]
        with pytest.raises(ReplicasUnconfirmed):
            callback()  # its repeat finds that claim: 503 again, not the 303 of a claim made
    read, claim = callback()  # the replica has it now: answered as the repeat it is
    assert claim is None
    assert read.state is FlowState.VERIFYING


def test_a_selection_refused_from_a_state_the_replica_lacks_is_503_not_409(
    servers: tuple[RedisService, RedisService],
) -> None:
    primary, replica = servers
    shim, setup = stores(primary)
    flow = setup.create("b" * 40, "Facebook", "page", None, None)
    assert setup.claim_callback(flow, TOKENS[1]).done
    setup.take_work(flow.flow_id, "verifying-task", FlowState.VERIFYING)
    offered = setup.get(flow.flow_id)
    assert offered is not None
    assert setup.offer_selection(offered, OFFERS, "verifying-task").done
    awaiting = setup.get(flow.flow_id)
    assert awaiting is not None
    ids = [OFFERS[0].id]

    with paused(replica, primary):
        with pytest.raises(ReplicasUnconfirmed):
            shim.submit_selection(awaiting, ids)  # 503: the selection is on the primary alone
        completing = setup.get(flow.flow_id)
        assert completing is not None
        assert completing.state is FlowState.COMPLETING
        with pytest.raises(ReplicasUnconfirmed):
            rules.submit_selection(shim, None, completing, ids)  # type: ignore[arg-type]
    again = rules.submit_selection(shim, None, completing, ids)  # type: ignore[arg-type]
    assert again.outcome is rules.SelectionOutcome.WRONG_STATE  # 409, now that the replica has it
