from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.shim.harness import Shim, open_shim


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def shim() -> AsyncIterator[Shim]:
    async with open_shim() as shim:
        yield shim
