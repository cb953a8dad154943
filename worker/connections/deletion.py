"""Removing a connection the caller deleted: Oktopost's `DELETE /v2/credential/{id}` under the account's
budget (after every flow waiting for it), then the connection goes with its `connection.deleted` event
in one step. Oktopost answering 404 counts as deleted. A transient fault is raised for the task to try
again later; the connection stays `deleting` meanwhile, and a repeated task deletes nothing twice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from worker.connections.records import ConnectionStore
from worker.oktopost import OktopostClient
from worker.oktopost.errors import RefusedError
from worker.upstream.budget import STEP1_PRIORITY
from worker.upstream.clients import Upstream

log = logging.getLogger(__name__)

CALL_SECONDS = 10.0
BUDGET_WAIT_SECONDS = 30.0  # how long one try waits for a slot before the task tries again later


class Deletion(StrEnum):
    DELETED = "deleted"
    GONE = "gone"  # nothing to do: deleted already, or its deletion was never asked for
    REFUSED = "refused"  # Oktopost refused for good (401, 403, 400): left `deleting`, logged
    NO_ACCOUNT = "no_account"  # its Oktopost account is no longer configured


class ConnectionDeleter:
    def __init__(
        self, store: ConnectionStore, upstream_of: Callable[[str], Upstream[OktopostClient] | None]
    ) -> None:
        self.store = store
        self.upstream_of = upstream_of

    def delete(self, tenant: str, connection_id: str) -> Deletion:
        """Raises the transient errors (worker.oktopost.errors.TransientError, NoBudgetInTime) for the
        caller to try again later."""
        record = self.store.record(tenant, connection_id)
        if record is None or record.get("_deleting") is None:
            self.store.forget_deletion(tenant, connection_id)
            return Deletion.GONE
        account = str(record.get("_account", ""))
        upstream = self.upstream_of(account)
        if upstream is None:
            log.warning("connection %s: account %s is not configured; not deleted", connection_id, account)
            return Deletion.NO_ACCOUNT
        try:
            with upstream.budget.call(STEP1_PRIORITY, time.time() + BUDGET_WAIT_SECONDS, CALL_SECONDS):
                if not self.store.deleting(tenant, connection_id):  # connected again while it waited
                    log.info("connection %s: connected again, its deletion called off", connection_id)
                    return Deletion.GONE
                upstream.client.delete_credential(connection_id, timeout=CALL_SECONDS)
        except RefusedError as refused:
            log.warning("connection %s: Oktopost refused its deletion: %s", connection_id, refused)
            return Deletion.REFUSED
        if not self.store.deleted(tenant, connection_id, account):  # connected again during the call
            log.info("connection %s: connected again during its deletion, kept", connection_id)
            return Deletion.GONE
        return Deletion.DELETED
