"""The Oktopost accounts the sandbox serves: each found by its Basic-auth pair, each with its own
authorizations, burst limit, block and daily count, as accounts sharing one Oktopost would have."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sandbox.authorizations import Account, AuthorizationRequest, UnknownRequest
from sandbox.httpserver import Request
from sandbox.ratelimit import DailyLimit, SlidingWindowLimiter


@dataclass(frozen=True, slots=True)
class AccountKey:
    """An account id and the API key that goes with it, the user and password of Basic auth."""

    account_id: str
    api_key: str


def parse_account_key(text: str) -> AccountKey:
    """`ID:KEY` -> AccountKey (the key may hold ':', the id may not); ValueError otherwise."""
    account_id, colon, api_key = text.partition(":")
    if not colon or not account_id.strip() or not api_key:
        raise ValueError(f"expected ID:KEY with both parts non-empty, got {text!r}")
    return AccountKey(account_id, api_key)


@dataclass(slots=True)
class ServedAccount:
    """One account: what it has authorized and the limits its calls count against."""

    id: str
    authorizations: Account
    limiter: SlidingWindowLimiter | None = None
    daily: DailyLimit | None = None
    throttled_until: float = 0.0  # an injected account-wide 429 refuses every call until then (monotonic)

    def reset(self) -> None:
        self.throttled_until = 0.0
        self.authorizations.reset()
        if self.limiter is not None:
            self.limiter.reset()
        if self.daily is not None:
            self.daily.reset()

    def blocked(self) -> bool:
        """Whether the burst limit's block is in force."""
        return self.limiter is not None and self.limiter.blocked()


class Accounts:
    """Every served account, in the order given; ids are unique."""

    def __init__(self, keys: Sequence[AccountKey], open_account: Callable[[str], ServedAccount]) -> None:
        self._keys: dict[str, bytes] = {}
        self._accounts: dict[str, ServedAccount] = {}
        for key in keys:
            if key.account_id in self._keys:
                raise ValueError(f"account {key.account_id!r} is given twice")
            self._keys[key.account_id] = key.api_key.encode()
            self._accounts[key.account_id] = open_account(key.account_id)

    def __iter__(self) -> Iterator[ServedAccount]:
        return iter(self._accounts.values())

    def authenticate(self, request: Request) -> ServedAccount | None:
        """The account whose id and key the request's Basic auth carries; None for any other."""
        scheme, _, encoded = request.header("authorization").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            pair = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, _, password = pair.partition(b":")
        account_id = user.decode("utf-8", errors="replace")
        expected = self._keys.get(account_id)
        # Compared even for an unknown id, so the time taken does not tell which ids exist.
        matches = hmac.compare_digest(password, expected if expected is not None else b"\0" + password)
        return self._accounts[account_id] if matches and expected is not None else None

    def find_request(self, request_id: str) -> tuple[ServedAccount, AuthorizationRequest]:
        """The authorization request with this id and the account that made it; UnknownRequest if none."""
        for account in self._accounts.values():
            try:
                return account, account.authorizations.find_request(request_id)
            except UnknownRequest:
                continue
        raise UnknownRequest(request_id)

    def reset(self) -> None:
        for account in self._accounts.values():
            account.reset()
