"""The hosted pages carry the flow's tenant's brand: its name, its colour (a stylesheet of the shim's own),
its logo (served by the shim from memory) and its support link; pages without a flow carry the default's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.browsers import came_back, page, text_of
from tests.support.shim import RETURN_URL, Shim, new_flow_id, open_shim

pytestmark = pytest.mark.anyio

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 4 4"><rect width="4" height="4"/></svg>'
TENANTS = """
[tenants.acme]
api_keys = ["acme-caller-key-0123456789abcdef"]
allowed_return_urls = ["https://app.example"]
oktopost = { account_id = "acme-account", api_key = "acme-oktopost-key" }

[tenants.acme.brand]
name = "Acme Social"
color = "#8A1538"
logo = "acme.svg"
support_url = "https://help.acme.example/connect"
"""


@pytest.fixture
async def branded(tmp_path: Path) -> AsyncIterator[Shim]:
    (tmp_path / "acme.svg").write_bytes(SVG)
    (tmp_path / "tenants.toml").write_text(TENANTS)
    async with open_shim(tenants_file=tmp_path / "tenants.toml", hosted_ui_app_name="Connector") as shim:
        yield shim


async def test_a_tenants_flow_shows_its_brand(branded: Shim) -> None:
    flow = branded.store.create(new_flow_id(), "LinkedIn", "profile", None, RETURN_URL, tenant="acme")
    await came_back(branded, flow)
    html = (await page(branded, flow)).text
    assert "Acme Social" in text_of(html)
    assert "Connector" not in html
    assert '<link rel="stylesheet" href="/connect/brand/acme.css">' in html
    assert '<img src="/connect/brand/acme/logo" alt="" height="32">' in html
    assert '<a href="https://help.acme.example/connect">Help from Acme Social</a>' in html

    stylesheet = await branded.http.get("/connect/brand/acme.css")
    assert stylesheet.headers["content-type"].startswith("text/css")
    assert re.search(r"--accent: #8a1538;", stylesheet.text)
    light, dark = stylesheet.text.split("@media (prefers-color-scheme: dark)")
    assert "--link: #8a1538;" in light  # the accent of links too
    assert "--link: #b97388;" in dark  # its tint that reads on the dark card
    logo = await branded.http.get("/connect/brand/acme/logo")
    assert (logo.status_code, logo.headers["content-type"], logo.content) == (200, "image/svg+xml", SVG)
    assert "sandbox" in logo.headers["content-security-policy"]


async def test_the_default_tenant_and_the_error_pages_show_the_default_brand(branded: Shim) -> None:
    flow = branded.new_flow()
    await came_back(branded, flow)
    html = (await page(branded, flow)).text
    assert "Connector" in text_of(html)
    assert "/connect/brand/" not in html  # no colour, no logo of its own: the stylesheet's accent
    assert "Help from" not in html
    missing = await branded.http.get(f"/connect/{new_flow_id()}")
    assert "Connector" in missing.text
    assert "Acme" not in missing.text
    assert (await branded.http.get("/connect/brand/default/logo")).status_code == 404
    assert (await branded.http.get("/connect/brand/nobody.css")).status_code == 404


async def test_hosted_ui_settings_brand_the_default_tenant(tmp_path: Path) -> None:
    (tmp_path / "logo.svg").write_bytes(SVG)
    async with open_shim(
        hosted_ui_color="#0B5D1E",
        hosted_ui_logo=str(tmp_path / "logo.svg"),
        hosted_ui_support_url="https://s.example",
    ) as shim:
        forbidden = await shim.http.get(f"/connect/{shim.new_flow().flow_id}")
        assert forbidden.status_code == 403
        assert '<link rel="stylesheet" href="/connect/brand/default.css">' in forbidden.text
        assert '<img src="/connect/brand/default/logo"' in forbidden.text
        assert 'href="https://s.example"' in forbidden.text
        assert "#0b5d1e" in (await shim.http.get("/connect/brand/default.css")).text
