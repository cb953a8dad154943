"""The sandbox's Oktopost account: authorization requests, consent, okt tokens and connected credentials.

Everything here is idempotent the way the upstream is: approving a request twice gives the same token,
verifying a live token again or repeating a completion answers the same credentials again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from sandbox.catalog import CREDENTIAL_PREFIX, Entity, new_profile, selectable_entities

Clock = Callable[[], float]

APPROVE = "approve"
DENY = "deny"
# A Step 1 request whose consent page has not been answered this long is forgotten (its page is then
# 404): longer than any flow waits for its callback (FLOW_TTL_SECONDS is at most a week, 15 minutes by
# default; a flow's consent that comes later is answered 410 by the shim anyway)
REQUEST_LIFETIME_S = 7 * 86400.0


class AuthorizationError(Exception):
    """A refusal of the account; each subclass maps to one HTTP answer."""


class UnknownRequest(AuthorizationError):
    """No authorization request has this id."""


class DecisionConflict(AuthorizationError):
    """The request was already approved and is now denied, or the other way round."""


class TokenInvalid(AuthorizationError):
    """The token is unknown or has expired."""


class NotSelectable(AuthorizationError):
    """A completion (PUT) for a profile token: there is nothing to select."""


class UnknownEntity(AuthorizationError):
    """A completion names an id that the token's entity list does not offer."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(entity_id)
        self.entity_id = entity_id


@dataclass(slots=True)
class AuthorizationRequest:
    """Step 1's result: the user has yet to approve or deny on the consent page."""

    id: str
    network: str
    entity_type: str
    callback_url: str
    decision: str | None = None
    token: str | None = None
    made_at: float = 0.0  # on the account's monotonic clock


@dataclass(slots=True)
class Grant:
    """What an approved request's okt token unlocks until it expires."""

    token: str
    request: AuthorizationRequest
    expires_at: float  # on the account's monotonic clock
    profile: Entity | None  # only for entity_type == "profile"
    # Each credential's Status as this grant connected it, so a repeated verify or PUT answers the same.
    statuses: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Credential:
    """A profile, page or group connected to the account."""

    entity: Entity
    entity_type: str
    created: str  # "YYYY-MM-DD HH:MM:SS", UTC
    status: str = "valid"  # or "invalid": as its latest connection left it
    calls: int = 0  # verify or PUT answers that carried it

    @property
    def id(self) -> str:
        return CREDENTIAL_PREFIX + self.entity.id


@dataclass(frozen=True, slots=True)
class Verification:
    """Step 3's result: a connected profile, or the pages/groups to choose from."""

    token: str
    entity_type: str
    profile: Credential | None = None
    entities: tuple[Entity, ...] = field(default_factory=tuple)


def new_token() -> str:
    """A token shaped like the reference's: 14 hex chars, a dot, 40 hex chars."""
    return f"{secrets.token_hex(7)}.{secrets.token_hex(20)}"


def add_query_param(url: str, name: str, value: str) -> str:
    """`url` with `name=value` appended to its query; existing parameters are kept byte for byte."""
    parts = urlsplit(url)
    pair = f"{quote(name)}={quote(value, safe='')}"
    query = f"{parts.query}&{pair}" if parts.query else pair
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class Account:
    """One Oktopost account's social authorizations, kept in memory."""

    def __init__(
        self,
        token_ttl_s: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        credential_status: Callable[[], str] = lambda: "valid",
    ) -> None:
        self._token_ttl_s = token_ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._credential_status = credential_status
        self._requests: dict[str, AuthorizationRequest] = {}
        self._grants: dict[str, Grant] = {}
        self._credentials: dict[str, Credential] = {}  # by credential id, in connection order

    def reset(self) -> None:
        self._requests.clear()
        self._grants.clear()
        self._credentials.clear()

    def request_authorization(
        self, network: str, entity_type: str, callback_url: str
    ) -> AuthorizationRequest:
        self._forget_the_past()
        request = AuthorizationRequest(
            secrets.token_urlsafe(16), network, entity_type, callback_url, made_at=self._clock()
        )
        self._requests[request.id] = request
        return request

    def _forget_the_past(self) -> None:
        """Drops the requests made more than REQUEST_LIFETIME_S ago and the grants whose token expired
        (an expired token is answered as an unknown one), so a sandbox that runs for months holds only
        the recent ones. Both dicts are in the order their entries were made."""
        now = self._clock()
        while self._requests:
            oldest = next(iter(self._requests.values()))
            if now - oldest.made_at < REQUEST_LIFETIME_S:
                break
            del self._requests[oldest.id]
        while self._grants:
            grant = next(iter(self._grants.values()))
            if now < grant.expires_at:
                break
            del self._grants[grant.token]

    def find_request(self, request_id: str) -> AuthorizationRequest:
        request = self._requests.get(request_id)
        if request is None:
            raise UnknownRequest(request_id)
        return request

    def decide(self, request_id: str, decision: str, as_profile: str | None = None) -> str:
        """Records the user's decision (once) and answers where to send the browser.

        `as_profile` (a network id) approves a profile request as that existing profile, so verifying
        answers its credential id again: the user reconnecting a profile in place.
        """
        request = self.find_request(request_id)
        if request.decision is None:
            request.decision = decision
            if decision == APPROVE:
                request.token = new_token()
                profile = self._profile(request, as_profile) if request.entity_type == "profile" else None
                expires_at = self._clock() + self._token_ttl_s
                self._grants[request.token] = Grant(request.token, request, expires_at, profile)
        elif request.decision != decision:
            raise DecisionConflict(request_id)
        if request.decision == APPROVE:
            assert request.token is not None
            return add_query_param(request.callback_url, "okt", request.token)
        return add_query_param(request.callback_url, "error", "access_denied")

    def verify(self, token: str) -> Verification:
        grant = self._live_grant(token)
        request = grant.request
        if grant.profile is not None:
            credential = self._connect(grant.profile, grant)
            return Verification(token, request.entity_type, profile=credential)
        return Verification(
            token, request.entity_type, entities=selectable_entities(request.network, request.entity_type)
        )

    def complete(self, token: str, ids: Sequence[str]) -> list[Credential]:
        """Connects the chosen pages or groups; `ids` is non-empty and free of duplicates."""
        grant = self._live_grant(token)
        if grant.profile is not None:
            raise NotSelectable(token)
        offered = {
            entity.id: entity
            for entity in selectable_entities(grant.request.network, grant.request.entity_type)
        }
        for entity_id in ids:
            if entity_id not in offered:
                raise UnknownEntity(entity_id)
        return [self._connect(offered[entity_id], grant) for entity_id in ids]

    def credential(self, credential_id: str) -> Credential | None:
        return self._credentials.get(credential_id)

    def connections(self) -> list[Credential]:
        return list(self._credentials.values())

    def seed_profiles(self, network: str, count: int) -> list[Credential]:
        """`count` profiles connected at once, as if each user had been through a flow (benchmarks)."""
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._wall_clock()))
        seeded = [Credential(new_profile(network), "profile", created) for _ in range(count)]
        self._credentials.update((credential.id, credential) for credential in seeded)
        return seeded

    def invalidate(self, credential_id: str) -> bool:
        """Turns a credential `invalid`, as when its network demands re-authorization; False if unknown."""
        credential = self._credentials.get(credential_id)
        if credential is None:
            return False
        credential.status = "invalid"
        return True

    def remove(self, credential_id: str) -> bool:
        """Forgets a credential, as removing it in Oktopost's app or API does; False if unknown."""
        return self._credentials.pop(credential_id, None) is not None

    def _profile(self, request: AuthorizationRequest, as_profile: str | None) -> Entity:
        if as_profile is None:
            return new_profile(request.network)
        known = self._credentials.get(CREDENTIAL_PREFIX + as_profile)
        if known is None:
            return new_profile(request.network, as_profile)
        if known.entity.network == request.network and known.entity_type == "profile":
            return known.entity
        return new_profile(request.network)  # that id is another network's (or a page): a profile of its own

    def _live_grant(self, token: str) -> Grant:
        grant = self._grants.get(token)
        if grant is None or self._clock() >= grant.expires_at:
            raise TokenInvalid(token)
        return grant

    def _connect(self, entity: Entity, grant: Grant) -> Credential:
        credential_id = CREDENTIAL_PREFIX + entity.id
        credential = self._credentials.get(credential_id)
        if credential is None:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._wall_clock()))
            credential = Credential(entity, grant.request.entity_type, created)
            self._credentials[credential_id] = credential
        if credential_id not in grant.statuses:
            grant.statuses[credential_id] = self._credential_status()
        # The status a grant first connected it with; a new grant after an invalidation makes it valid again.
        credential.status = grant.statuses[credential_id]
        credential.calls += 1
        return credential
