"""The other client on the account: an integration of the partner's own that calls Oktopost a few times
a second with the same account's key and ignores every 429; and the count, from the sandbox's log, of
who called while the account was blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterable
from types import TracebackType

import httpx

from bench.load import ended_quietly
from bench.report import SharedAccount
from bench.upstream import SANDBOX_AUTH

# A route neither ours nor the baselines call, so the sandbox's log tells the two clients apart. The
# sandbox does not serve it (404), but like Oktopost it counts the call against the account first.
CARELESS_PATH = "/v2/campaign"
# one line of the sandbox's access log: "GET /v2/campaign 429 0.3ms"
_ANSWER = re.compile(r"^[A-Z]+ (/v2/\S*) (\S+) [\d.]+ms$")


class CarelessClient:
    """Calls `rate` times a second from entering to leaving the context, whatever the answers."""

    def __init__(self, base_url: str, rate: float) -> None:
        self._base_url = base_url
        self._rate = rate
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    async def __aenter__(self) -> CarelessClient:
        self._task = asyncio.create_task(self._call_forever())
        return self

    async def _call_forever(self) -> None:
        async with httpx.AsyncClient(base_url=self._base_url, auth=SANDBOX_AUTH, timeout=5) as http:
            start = time.perf_counter()
            while True:
                await asyncio.sleep(max(0.0, start + self.calls / self._rate - time.perf_counter()))
                self.calls += 1
                with contextlib.suppress(httpx.HTTPError):  # careless: nothing it hears changes a thing
                    await http.get(CARELESS_PATH)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await ended_quietly(self._task)


def blocked_calls(log_lines: Iterable[str]) -> SharedAccount:
    """Reads the sandbox's access log, in the order it decided each call. With the burst limit as the
    only source of 429s, a run of 429s is one block: the call that went past the limit, then every
    call refused until the block ends (the first call after it is accepted, the window having emptied).
    A system's first 429 in a block is how it learns of the block; every later one is a call it made
    knowing, or one it had already sent."""
    tally = SharedAccount()
    in_block = system_told = False
    for line in log_lines:
        answer = _ANSWER.match(line.strip())
        if answer is None:
            continue
        path, outcome = answer.groups()
        careless = path == CARELESS_PATH
        tally.careless_calls += careless
        if outcome != "429":
            in_block = False
            continue
        if not in_block:
            in_block, system_told = True, False
            tally.blocks += 1
        if careless:
            continue
        tally.calls_in_blocks += 1
        tally.calls_after_first_429 += system_told
        system_told = True
    return tally
