"""The sandbox's own controls under `/_sandbox/`: faults, connections, stats and reset, and what happens to a
credential in Oktopost without the pipeline (`/_sandbox/credentials/{id}/invalidate` or `/remove`). No auth,
no faults, and refusals always in one shape, so a test can read why its fault settings were refused."""

from __future__ import annotations

import json
from collections.abc import Callable

from sandbox.accounts import Accounts
from sandbox.catalog import NETWORKS
from sandbox.faults import FaultConfigError, Faults
from sandbox.httpserver import Request, Response, json_response
from sandbox.stats import Stats


class ControlPanel:
    """Serves `/_sandbox/*` for tests, benchmarks and the demo."""

    def __init__(self, accounts: Accounts, faults: Faults, stats: Stats, reset: Callable[[], None]) -> None:
        self._accounts = accounts
        self._faults = faults
        self._stats = stats
        self._reset = reset
        self._routes: dict[str, dict[str, Callable[[Request], Response]]] = {
            "/_sandbox/faults": {"GET": self._read_faults, "POST": self._set_faults},
            "/_sandbox/connections": {"GET": self._connections},
            "/_sandbox/credentials": {"POST": self._seed_credentials},
            "/_sandbox/stats": {"GET": self._read_stats},
            "/_sandbox/reset": {"POST": self._reset_all},
            "/_sandbox/health": {"GET": self._health},
        }

    def answer(self, request: Request) -> Response:
        parts = request.path.rstrip("/").split("/")  # ["", "_sandbox", "credentials", ID, ACTION]
        if len(parts) == 5 and parts[2] == "credentials" and parts[4] in ("invalidate", "remove"):
            if request.method != "POST":
                return _error(405, "API", {"Error": "Method not allowed"}, [("allow", "POST")])
            return self._change_credential(parts[3], parts[4])
        methods = self._routes.get(request.path.rstrip("/"))
        if methods is None:
            return _error(404, "API", {"Error": f"Unknown sandbox route {request.path}"})
        endpoint = methods.get(request.method)
        if endpoint is None:
            return _error(405, "API", {"Error": "Method not allowed"}, [("allow", ", ".join(methods))])
        return endpoint(request)

    def _read_faults(self, _request: Request) -> Response:
        return json_response(200, self._faults.config.as_json())

    def _set_faults(self, request: Request) -> Response:
        try:
            changes = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            changes = None
        if not isinstance(changes, dict):
            return _error(400, "Param", {"body": "must be a JSON object of fault settings"})
        try:
            config = self._faults.configure(changes)
        except FaultConfigError as exc:
            return _error(400, "Param", {exc.field: exc.message})
        return json_response(200, config.as_json())

    def _connections(self, _request: Request) -> Response:
        listed = [
            {
                "Id": credential.id,
                "Account": account.id,
                "Network": credential.entity.network,
                "Name": credential.entity.name,
                "DisplayName": credential.entity.display_name,
                "Type": credential.entity_type,
                "Status": credential.status,
                "Created": credential.created,
                "calls": credential.calls,
            }
            for account in self._accounts
            for credential in account.authorizations.connections()
        ]
        return json_response(200, listed)

    def _seed_credentials(self, request: Request) -> Response:
        """`{"count": N, "network"?: "LinkedIn", "account"?: id}`: N profiles connected at once."""
        try:
            asked = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            asked = None
        if not isinstance(asked, dict):
            return _error(400, "Param", {"body": "must be a JSON object"})
        count, network = asked.get("count"), asked.get("network", "LinkedIn")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            return _error(400, "Param", {"count": "a whole number from 1 to 100000"})
        if network not in NETWORKS:
            return _error(400, "Param", {"network": f"one of {', '.join(NETWORKS)}"})
        account = next((a for a in self._accounts if a.id == asked.get("account", a.id)), None)
        if account is None:
            return _error(404, "API", {"Error": "Unknown account"})
        seeded = account.authorizations.seed_profiles(network, count)
        return json_response(200, {"Result": True, "Ids": [credential.id for credential in seeded]})

    def _change_credential(self, credential_id: str, action: str) -> Response:
        for account in self._accounts:
            credentials = account.authorizations
            done = (
                credentials.invalidate(credential_id)
                if action == "invalidate"
                else credentials.remove(credential_id)
            )
            if done:
                return json_response(200, {"Result": True})
        return _error(404, "API", {"Error": "Credential not found"})

    def _read_stats(self, _request: Request) -> Response:
        blocked = {account.id: account.blocked() for account in self._accounts}
        return json_response(200, self._stats.as_json(blocked))

    def _reset_all(self, _request: Request) -> Response:
        self._reset()
        return json_response(200, {"Result": True})

    def _health(self, _request: Request) -> Response:
        return json_response(200, {"Result": True})


def _error(
    status: int, kind: str, detail: dict[str, str], headers: list[tuple[str, str]] | None = None
) -> Response:
    return json_response(status, {"Result": False, "Errors": {kind: detail}}, headers)
