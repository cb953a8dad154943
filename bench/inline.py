"""Baseline `inline`: the reference's implementation example as a web app. The callback handler verifies
the okt token with Oktopost before it answers, once, with no queue and no retry, then reports the outcome.

    python -m bench.inline --port 8123     (Oktopost from OKTOPOST_* settings, Redis from
                                                    BENCH_REDIS_URL, outcomes on BENCH_DONE_CHANNEL)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from bench.completion import DONE_CHANNEL_ENV, REDIS_URL_ENV, Completion, outcome_of
from worker.config.settings import load_settings
from worker.oktopost import AsyncOktopostClient
from worker.oktopost.errors import OktopostError


def create_app(redis_url: str, done_channel: str) -> FastAPI:
    upstream = AsyncOktopostClient.from_settings(load_settings())
    results = aioredis.Redis.from_url(redis_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstream.aclose()
        await results.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/callback/{flow_id}")
    async def callback(flow_id: str, okt: str) -> HTMLResponse:
        try:
            await upstream.verify(okt)
        except OktopostError as error:
            ending = Completion(flow_id, outcome_of(error), type(error).__name__)
            await results.publish(done_channel, ending.to_json())
            return HTMLResponse("<p>Connecting your account failed.</p>", status_code=502)
        await results.publish(done_channel, Completion(flow_id, "completed").to_json())
        return HTMLResponse("<p>Your account is connected.</p>")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inline")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_app(os.environ[REDIS_URL_ENV], os.environ[DONE_CHANNEL_ENV])
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
