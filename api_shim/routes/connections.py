"""The callers' connections: every credential their flows connected, listed a page at a time, read one by
one, deleted at Oktopost (by a worker, within the account's budget) and reconnected with a new flow.
Everything is scoped by the caller's tenant: another tenant's connection is 404, like an unknown one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api_shim.deps import CallerTenant, Deps, ShimDeps, caller
from api_shim.errors import ApiError
from api_shim.models import (
    AuthorizationCreated,
    AuthorizationRequest,
    ConnectionDeleting,
    ConnectionList,
    Network,
    ReconnectRequest,
)
from api_shim.openapi import errors
from api_shim.routes.authorizations import start_flow
from worker.connections.records import Connection, DeleteAsked, InvalidCursor
from worker.oktopost import NETWORKS, canonical_network

router = APIRouter(dependencies=[Depends(caller)])

_NOT_FOUND = errors(404, meanings={404: "no such connection for this tenant"})


@router.get(
    "/v1/connections",
    responses=errors(422, meanings={422: "a bad filter, limit or cursor"}),
)
def list_connections(
    shim: ShimDeps,
    tenant: CallerTenant,
    reference: Annotated[str | None, Query(max_length=256)] = None,
    network: Annotated[Network | None, Query(description=", ".join(NETWORKS) + "; any case")] = None,
    status: Literal["valid", "invalid"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ConnectionList:
    """The tenant's connections in a stable order, each once across pages; `next_cursor` leads on."""
    try:
        wanted_network = canonical_network(network) if network is not None else None
    except ValueError as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    try:
        page = shim.connections.page(
            tenant, limit, cursor, reference=reference, network=wanted_network, status=status
        )
    except InvalidCursor:
        raise ApiError(422, "invalid_cursor", "cursor is not one this list handed out") from None
    return ConnectionList(connections=page.connections, next_cursor=page.next_cursor)


@router.get("/v1/connections/{connection_id}", responses=_NOT_FOUND)
def get_connection(connection_id: str, shim: ShimDeps, tenant: CallerTenant) -> Connection:
    return _connection(shim, tenant, connection_id)


@router.delete(
    "/v1/connections/{connection_id}",
    status_code=202,
    responses=_NOT_FOUND,
)
def delete_connection(connection_id: str, shim: ShimDeps, tenant: CallerTenant) -> ConnectionDeleting:
    """Deleted at Oktopost by a worker, then `connection.deleted`; asked again while under way, 202 again."""
    _known(connection_id)
    asked = shim.connections.ask_delete(tenant, connection_id)
    if asked is DeleteAsked.MISSING:
        raise _not_found()
    if asked is DeleteAsked.ASKED:
        # if the task is lost anyway, a worker queues it again (worker.connections.checks.CheckLoop)
        shim.enqueuer.enqueue_connection_deletion(tenant, connection_id)
    return ConnectionDeleting(id=connection_id)


@router.post(
    "/v1/connections/{connection_id}/reconnect",
    status_code=201,
    responses=errors(
        404,
        422,
        502,
        meanings={
            404: "no such connection for this tenant",
            422: "return_url not allowed, or Oktopost refused",
            502: "Oktopost is unavailable",
        },
    ),
)
async def reconnect(
    connection_id: str, shim: ShimDeps, tenant: CallerTenant, body: ReconnectRequest | None = None
) -> AuthorizationCreated:
    """A new flow for the connection's network, entity type and first reference; its events carry
    `reconnects` in `authorization.started`'s data, and its hosted pages say it is a reconnection."""
    connection = await run_in_threadpool(_connection, shim, tenant, connection_id)
    options = body or ReconnectRequest()
    request = AuthorizationRequest(
        network=connection.network,
        type=connection.entity_type,
        return_url=options.return_url,
        reference=connection.references[0] if connection.references else None,
        ui=options.ui,
        state=options.state,
        locale=options.locale,
    )
    return await start_flow(request, shim, tenant, reconnects=connection.id)


def _connection(shim: Deps, tenant: str, connection_id: str) -> Connection:
    _known(connection_id)
    connection = shim.connections.get(tenant, connection_id)
    if connection is None:
        raise _not_found()
    return connection


def _known(connection_id: str) -> None:
    if not connection_id or len(connection_id) > 256 or not connection_id.isprintable():
        raise _not_found()


def _not_found() -> ApiError:
    return ApiError(404, "connection_not_found", "no such connection")
