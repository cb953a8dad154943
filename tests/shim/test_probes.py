"""/healthz, /readyz and /metrics: open to anyone (/metrics only with METRICS_TOKEN when that is set), and
honest about Redis."""

from __future__ import annotations

import pytest

from tests.support.shim import CALLER, TOKEN, Shim, open_shim, shim_settings
from worker.config.settings import ConfigError

pytestmark = pytest.mark.anyio


async def test_the_shim_is_alive_and_ready_with_redis_answering(shim: Shim) -> None:
    alive = await shim.http.get("/healthz")
    ready = await shim.http.get("/readyz")
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_the_shim_is_not_ready_while_redis_is_away_and_routes_answer_503(shim: Shim) -> None:
    flow = shim.new_flow()
    shim.redis_server.connected = False
    ready = await shim.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "unavailable"
    callback = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert callback.status_code == 503
    assert callback.headers["retry-after"] == "2"
    shim.redis_server.connected = True
    assert (await shim.http.get("/readyz")).status_code == 200


async def test_metrics_count_requests_by_route_template_and_callbacks_by_outcome(shim: Shim) -> None:
    flow = shim.new_flow()
    await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    answer = await shim.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    lines = answer.text.splitlines()
    assert any(
        line.startswith("okc_shim_requests_total{")
        and 'route="/v1/callback/{flow_id}"' in line
        and 'status="303"' in line
        for line in lines
    )
    assert any(line.startswith('okc_shim_callbacks_total{outcome="claimed"}') for line in lines)
    assert flow.flow_id not in answer.text


async def test_odd_methods_and_unknown_routes_are_counted_as_other(shim: Shim) -> None:
    for index in range(5):
        await shim.http.request(f"FOO{index}", "/healthz")
        await shim.http.get(f"/no/such/route/{index}")
    text = (await shim.http.get("/metrics")).text
    requests = [line for line in text.splitlines() if line.startswith("okc_shim_requests_total{")]
    assert any('method="other"' in line for line in requests)
    assert any('route="other"' in line for line in requests)
    assert not any("FOO" in line or "/no/such" in line for line in requests)


METRICS_TOKEN = "metrics-token-5b1e0c9d7a"


async def test_with_a_metrics_token_metrics_need_it_as_a_bearer_token() -> None:
    async with open_shim(metrics_token=METRICS_TOKEN) as shim:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, CALLER):
            refused = await shim.http.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            assert "okc_" not in refused.text
        scraped = await shim.http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200
        assert "okc_account_paused" in scraped.text
        assert (await shim.http.get("/healthz")).status_code == 200  # probes stay open


def test_a_short_metrics_token_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        shim_settings(metrics_token="short")


async def test_openapi_shows_no_oktopost_account(shim: Shim) -> None:
    described = (await shim.http.get("/openapi.json")).text
    assert shim.store.default_account not in described
