"""Every Redis name oktopost-connect uses, built in this one place.

Channels and streams are public: subscribing services rely on them. The flow hash, the token key and
the deadline index are internal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisNames:
    prefix: str = "oktopost"

    # public
    @property
    def all_events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def all_events_stream(self) -> str:
        """Every event of every flow, for consumer groups (XREADGROUP/XACK); kept for the retention."""
        return f"{self.prefix}:events:stream"

    def tenant_channel(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:events"

    def flow_channel(self, flow_id: str) -> str:
        return f"{self.prefix}:flow:{flow_id}"

    def flow_stream(self, flow_id: str) -> str:
        return f"{self.prefix}:flow:{flow_id}:events"

    def connection_channel(self, connection_id: str) -> str:
        """Pub/sub channel with every lifecycle event of one connection (a credential id)."""
        return f"{self.prefix}:connection:{connection_id}"

    # internal
    def flow_state(self, flow_id: str) -> str:
        return f"{self.prefix}:flow:{flow_id}:state"

    def flow_token(self, flow_id: str) -> str:
        return f"{self.prefix}:flow:{flow_id}:token"

    def token_claim(self, token_fp: str) -> str:
        """The flow an okt token was claimed by (keyed by its fingerprint), for as long as the token lives."""
        return f"{self.prefix}:token:{token_fp}"

    @property
    def deadlines(self) -> str:
        """Sorted set: live flow ids scored by the epoch second at which they expire."""
        return f"{self.prefix}:deadlines"

    @property
    def replication_barrier(self) -> str:
        """Counter the shim writes after a transition's script when replicas confirm acknowledged steps
        (REDIS_WAIT_REPLICAS): WAIT then covers the state the script read, whoever wrote it."""
        return f"{self.prefix}:replication:barrier"

    @property
    def leases(self) -> str:
        """Sorted set: flows with work queued or running, scored by when that work must show progress."""
        return f"{self.prefix}:leases"

    @property
    def parked_accounts(self) -> str:
        """Sorted set: the Oktopost accounts that have parked flows (by the name of their parked set),
        scored by when a slot may next free for them (one set for every account, so a worker finds the
        due ones in one call)."""
        return f"{self.prefix}:parked:accounts"

    def account(self, account_id: str) -> AccountNames:
        """The names of one Oktopost account's budget, pause and daily count, shared by every process
        and by every tenant on that account. The account id is part of the names (it is no secret; the
        account's API key never is)."""
        return AccountNames(self.prefix, account_id)

    @property
    def workers(self) -> str:
        """Sorted set: worker node names, scored by when each last showed it is consuming (its sweeper)."""
        return f"{self.prefix}:workers"

    def queue_workers(self, queue: str) -> str:
        """Sorted set: the node names of the workers serving one kind of task (QUEUE_KINDS), scored as
        `workers` is."""
        return f"{self.prefix}:workers:{queue}"

    @property
    def worker_metrics(self) -> str:
        return f"{self.prefix}:metrics"

    # the shim's open event streams (server-sent events), counted for their caps
    def flow_event_streams(self, flow_id: str) -> str:
        """Sorted set: the streams open on a flow's events, scored by when each must have ended."""
        return f"{self.prefix}:streams:flow:{flow_id}"

    def key_event_streams(self, key_digest: str) -> str:
        """Sorted set: the streams open with one caller key (by its SHA-256), scored the same way."""
        return f"{self.prefix}:streams:key:{key_digest}"

    # connections: a tenant's connections (kept without expiry), and the accounts whose health is checked
    def tenant_connections(self, tenant: str) -> str:
        """Hash: a tenant's connections, credential id -> the connection's JSON (with its internal
        fields, each named with a leading `_`)."""
        return f"{self.prefix}:tenant:{tenant}:connections"

    def tenant_connection_order(self, tenant: str) -> str:
        """Sorted set: the same ids, all scored 0, so they page in one stable (lexical) order."""
        return f"{self.prefix}:tenant:{tenant}:connections:order"

    @property
    def connection_accounts(self) -> str:
        """Set: the Oktopost accounts that have connections (the accounts to check)."""
        return f"{self.prefix}:connections:accounts"

    @property
    def connection_counts(self) -> str:
        """Hash: "{account}|{status}" -> how many connections the account has with that status, kept by
        the steps that change connections (what /metrics shows, in one read)."""
        return f"{self.prefix}:connections:counts"

    @property
    def connections_deleting(self) -> str:
        """Sorted set: "{tenant}:{id}" of connections whose deletion was asked for, scored by when it was
        last queued (an entry left long after is queued again)."""
        return f"{self.prefix}:connections:deleting"

    # webhooks: endpoints per tenant, one delivery per (endpoint, event), and the deliveries not done yet
    def webhook_endpoints(self, tenant: str) -> str:
        """Sorted set: a tenant's endpoint ids, scored by when each was created."""
        return f"{self.prefix}:tenant:{tenant}:webhooks"

    @property
    def webhook_index(self) -> str:
        """Sorted set: every tenant's endpoint ids (whether there are any at all, in one EXISTS)."""
        return f"{self.prefix}:webhooks"

    @property
    def webhook_dispatcher_turn(self) -> str:
        """String with a TTL: the worker process whose turn it is to dispatch events to webhooks."""
        return f"{self.prefix}:webhooks:dispatcher"

    @property
    def webhook_dispatch_cursor(self) -> str:
        """String: the id of the last all-flows stream entry dispatched to webhooks."""
        return f"{self.prefix}:webhooks:cursor"

    def webhook_replay_turn(self, tenant: str) -> str:
        """Integer with a TTL: how many replays a tenant made through the shim since its window began."""
        return f"{self.prefix}:tenant:{tenant}:replay"

    def webhook_endpoint(self, endpoint_id: str) -> str:
        """Hash: an endpoint's tenant, url, event types, secret and creation time."""
        return f"{self.prefix}:webhook:{endpoint_id}"

    def webhook_deliveries(self, endpoint_id: str) -> str:
        """Sorted set: an endpoint's delivery ids, scored by when each was created (trimmed by age)."""
        return f"{self.prefix}:webhook:{endpoint_id}:deliveries"

    def webhook_flow_order(self, endpoint_id: str, flow_id: str) -> str:
        """Sorted set: one flow's deliveries to one endpoint not over yet, by seq; the first goes first."""
        return f"{self.prefix}:webhook:{endpoint_id}:flow:{flow_id}"

    def webhook_rate(self, endpoint_id: str) -> str:
        """Sorted set: the attempts made to one endpoint in its rate window, scored by their moment."""
        return f"{self.prefix}:webhook:{endpoint_id}:rate"

    def webhook_delivery(self, delivery_id: str) -> str:
        """Hash: one event's delivery to one endpoint: its status, attempts, the event's body."""
        return f"{self.prefix}:delivery:{delivery_id}"

    def webhook_in_flight(self, endpoint_id: str) -> str:
        """Sorted set: the attempts being sent to an endpoint right now, by any worker (their owner ids,
        scored by when each attempt's lease ends)."""
        return f"{self.prefix}:webhook:{endpoint_id}:in-flight"

    def webhook_waiting(self, endpoint_id: str) -> str:
        """Sorted set: deliveries of an endpoint that found no slot, scored by the turn each was given
        (one after another, as fast as the endpoint's attempts can end)."""
        return f"{self.prefix}:webhook:{endpoint_id}:waiting"

    @property
    def webhook_due(self) -> str:
        """Sorted set: deliveries not done yet, scored by when their task must next show up (the
        dispatcher queues a task again for one whose moment passed long ago: a lost task)."""
        return f"{self.prefix}:deliveries:due"

    @property
    def webhook_pending(self) -> str:
        """Sorted set: the same deliveries, scored by when they were created (the oldest one's age)."""
        return f"{self.prefix}:deliveries:pending"

    def webhook_tenant_pending(self, tenant: str) -> str:
        """Sorted set: one tenant's deliveries not done yet, scored by when they were created: its count
        is held under WEBHOOK_MAX_PENDING (the scripts that end a delivery take it out here too)."""
        return f"{self.prefix}:deliveries:pending:{tenant}"

    @property
    def webhook_behind(self) -> str:
        """Hash: tenant -> where in its event index the dispatcher goes on (an XRANGE start), for the
        tenants whose events wait there because they had WEBHOOK_MAX_PENDING deliveries pending."""
        return f"{self.prefix}:webhooks:behind"

    def tenant_event_index(self, tenant: str) -> str:
        """Stream: one tenant's events, each under its all-flows stream entry's id (field `event`), kept
        as long as that stream; written by the webhook dispatcher, read by replays (internal)."""
        return f"{self.prefix}:tenant:{tenant}:events:stream"


@dataclass(frozen=True, slots=True)
class AccountNames:
    """One Oktopost account's names (worker.upstream.budget, worker.upstream.account).

    All under `{prefix}:account:{id}:`.
    """

    prefix: str
    account_id: str

    @property
    def _base(self) -> str:
        return f"{self.prefix}:account:{self.account_id}"

    @property
    def budget_window(self) -> str:
        """Sorted set: upstream calls granted, scored by when they ended (or may end, while in flight)."""
        return f"{self._base}:budget:window"

    @property
    def budget_queue(self) -> str:
        """Sorted set: callers waiting for upstream budget, scored by priority (deadline first)."""
        return f"{self._base}:budget:queue"

    @property
    def budget_alive(self) -> str:
        """Sorted set: the same waiters, scored by when they last asked (drops dead ones)."""
        return f"{self._base}:budget:alive"

    @property
    def parked_flows(self) -> str:
        """Sorted set: the account's flows waiting for its budget without a worker thread, scored by
        their deadline (worker.upstream.parking)."""
        return f"{self._base}:budget:parked"

    @property
    def early_slots(self) -> str:
        """Sorted set: slots reserved for released parked flows before they free, scored by the moment
        each frees (worker.upstream.parking); each stands for the window's call it replaces until then."""
        return f"{self._base}:budget:early"

    @property
    def account_pause(self) -> str:
        """String: the moment (epoch seconds on Redis's clock) until which no call is made for the
        account, because Oktopost answered 429."""
        return f"{self._base}:pause"

    @property
    def resume_ramp(self) -> str:
        """String: the end of the account's last pause, kept while its parked flows go out again one
        call at a time, one more for each call that has ended since (worker.upstream.parking)."""
        return f"{self._base}:resume"

    @property
    def daily_calls_prefix(self) -> str:
        """The day's counter without its day (the budget's Lua appends the day it reads from TIME)."""
        return f"{self._base}:calls:"

    def daily_calls(self, day: int) -> str:
        """Counter: calls made on one UTC day (days since the epoch); it expires the day after."""
        return f"{self.daily_calls_prefix}{day}"

    @property
    def reserved_calls(self) -> str:
        """Counter: the calls the account's flows under way still need (kept by the flow transitions)."""
        return f"{self._base}:reserved"

    @property
    def admissions(self) -> str:
        """Sorted set: new flows' reserved calls between Step 1 and their creation, scored by expiry."""
        return f"{self._base}:admissions"

    @property
    def connections(self) -> str:
        """Set: the account's connections, each "{tenant}:{credential id}" (tenant names hold no `:`)."""
        return f"{self._base}:connections"

    @property
    def check_lock(self) -> str:
        """String: the fence number of the one process checking the account's connections now."""
        return f"{self._base}:check:lock"

    @property
    def check_fence(self) -> str:
        """Counter: the last fence number given to a check of the account."""
        return f"{self._base}:check:fence"

    @property
    def check_due(self) -> str:
        """String: when (epoch seconds on Redis's clock) the account's next check is due."""
        return f"{self._base}:check:due"

    @property
    def check_window(self) -> str:
        """Sorted set: the check calls of the last window, scored by when each may end at the latest."""
        return f"{self._base}:check:window"

    @property
    def check_daily_prefix(self) -> str:
        """The day's counter of check calls without its day (the script appends the day it reads)."""
        return f"{self._base}:check:calls:"

    def check_daily_calls(self, day: int) -> str:
        """Counter: the check calls of one UTC day (days since the epoch); it expires the day after."""
        return f"{self.check_daily_prefix}{day}"

    @property
    def worker_metrics(self) -> str:
        """The workers' metrics hash (RedisNames.worker_metrics), where the account counts its pauses."""
        return f"{self.prefix}:metrics"

    @property
    def pauses_field(self) -> str:
        """The field of the metrics hash counting the account's pauses."""
        return f"account|{self.account_id}|pauses"
