"""Each Oktopost account's client and budget in one process: built on first use and kept, so every flow of
every tenant on an account reuses one pooled client and counts in one budget (shared with the other
processes through Redis). The shim keeps asyncio clients for Step 1, the worker blocking ones."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

from worker.config.tenants import OktopostAccount
from worker.upstream.budget import UpstreamBudget

ClientT = TypeVar("ClientT")


@dataclass(frozen=True, slots=True)
class Upstream(Generic[ClientT]):
    """One Oktopost account as this process calls it."""

    account_id: str
    client: ClientT
    budget: UpstreamBudget


class Upstreams(Generic[ClientT]):
    """The process's Upstream of each configured Oktopost account, by account id."""

    def __init__(
        self,
        accounts: Mapping[str, OktopostAccount],
        build_client: Callable[[OktopostAccount], ClientT],
        build_budget: Callable[[OktopostAccount], UpstreamBudget],
        given: list[Upstream[ClientT]] | None = None,
    ) -> None:
        """`given`: upstreams built by the caller (tests), used for their accounts instead of building."""
        self.accounts = dict(accounts)
        self._build_client = build_client
        self._build_budget = build_budget
        self._built: dict[str, Upstream[ClientT]] = {
            upstream.account_id: upstream for upstream in given or []
        }
        self._budgets: dict[str, UpstreamBudget] = {
            upstream.account_id: upstream.budget for upstream in given or []
        }
        self._given = set(self._built)
        self._lock = threading.RLock()  # get() builds the budget under it too

    @classmethod
    def single(cls, client: ClientT, budget: UpstreamBudget) -> Upstreams[ClientT]:
        """One account only: the budget's, called with `client` (a deployment's tests)."""
        return cls({}, _not_configured, _not_configured, [Upstream(budget.names.account_id, client, budget)])

    def get(self, account_id: str) -> Upstream[ClientT] | None:
        """The account's client and budget; None when the account is not configured (any more)."""
        upstream = self._built.get(account_id)
        if upstream is not None:
            return upstream
        account = self.accounts.get(account_id)
        if account is None:
            return None
        with self._lock:
            if account_id not in self._built:
                self._built[account_id] = Upstream(
                    account_id, self._build_client(account), self.budget(account)
                )
            return self._built[account_id]

    def budget(self, account: OktopostAccount) -> UpstreamBudget:
        with self._lock:
            if account.account_id not in self._budgets:
                self._budgets[account.account_id] = self._build_budget(account)
            return self._budgets[account.account_id]

    def budgets(self) -> list[UpstreamBudget]:
        """Every account's budget (built without clients): what the sweeper and /metrics watch."""
        for account in self.accounts.values():
            self.budget(account)
        return list(self._budgets.values())

    def built_clients(self) -> list[ClientT]:
        """The clients built here so far (not the given ones), for the process to close at its end."""
        return [
            upstream.client for upstream in self._built.values() if upstream.account_id not in self._given
        ]


def _not_configured(account: OktopostAccount) -> NoReturn:
    raise LookupError(f"Oktopost account {account.account_id} is not configured")
