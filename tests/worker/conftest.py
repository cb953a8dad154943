"""The `call` fixture: one client method through a MockTransport, by the sync and the async client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.worker.mock_oktopost import ACCOUNT, BASE, KEY, Recorder
from worker.oktopost import AsyncOktopostClient, OktopostClient


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`call(recorder, "verify", TOKEN)` runs one client method through a MockTransport, sync or async."""

    def run(recorder: Recorder, method: str, *args: Any, **kwargs: Any) -> Any:
        transport = httpx.MockTransport(recorder)
        if request.param == "sync":
            with OktopostClient(BASE, ACCOUNT, KEY, transport=transport) as client:
                return getattr(client, method)(*args, **kwargs)

        async def run_async() -> Any:
            async with AsyncOktopostClient(BASE, ACCOUNT, KEY, transport=transport) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(run_async())

    return run
