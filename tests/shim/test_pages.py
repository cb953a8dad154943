"""GET /connect/{flow_id}: the hosted page of each stage, shown only to the browser the flow is bound to."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.browsers import FormFields, came_back, page, text_of
from tests.support.shim import OFFERS, SHIM_URL, Shim, new_flow_id, open_shim
from worker.events import EntityOffer
from worker.flows.flow import FlowState

pytestmark = pytest.mark.anyio

OWN_IMAGE = f"{SHIM_URL}/images/page-1.png"
FOREIGN_IMAGE = "https://cdn.example/page-2.png"
ENTITIES = [
    EntityOffer(
        id="p-1", name="Acme <News>", network="Facebook", image_link=OWN_IMAGE, network_username="acme"
    ),
    EntityOffer(id="p-2", name="Acme Jobs", network="Facebook", image_link=FOREIGN_IMAGE),
    EntityOffer(id="p-0", name="Acme Old", network="Facebook", is_connected=True),
]


def _addresses(html: str) -> list[str]:
    return re.findall(r'(?:src|href|action)="([^"]*)"', html)


async def test_an_unknown_flow_is_a_404_page(shim: Shim) -> None:
    for flow_id in (new_flow_id(), "not-a-flow"):
        answer = await shim.http.get(f"/connect/{flow_id}")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "No such connection" in answer.text


async def test_a_browser_without_the_cookie_gets_a_403_page_that_tells_nothing_of_the_flow(
    shim: Shim,
) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    shim.offer(shim.flow(flow.flow_id), ENTITIES)
    async with shim.another_browser() as other:
        answer = await page(shim, flow, other)
        forged = await other.get(
            f"/connect/{flow.flow_id}", headers={"Cookie": "okc_browser=" + "guessed" * 6}
        )
    for refused in (answer, forged):
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        for detail in (flow.flow_id, "Facebook", "Acme", "data-status", "awaiting_selection"):
            assert detail not in refused.text


async def test_the_waiting_page_says_what_happens_and_listens_for_events(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    answer = await page(shim, flow)
    assert answer.status_code == 200
    fields = FormFields(answer.text)
    assert fields.main["data-status"] == "verifying"
    assert fields.main["data-events"] == f"/connect/{flow.flow_id}/events"
    words = text_of(answer.text)
    assert "oktopost-connect" in words
    assert "Facebook" in words
    assert "confirming with Facebook" in words
    # without JavaScript a <meta refresh> reloads the page every few seconds, and a link checks again at
    # once; both inside <noscript>, so a browser that runs the page's script (and updates the page from
    # its events) never sees them (axe: meta-refresh)
    refresh = re.search(r'<noscript><meta http-equiv="refresh" content="(\d+)"></noscript>', answer.text)
    assert refresh is not None
    assert 0 < int(refresh.group(1)) <= 5
    assert answer.text.index(refresh.group(0)) < answer.text.index("</head>")
    check_again = re.search(r"<noscript>\s*<p><a ([^>]*)>([^<]*)</a>", answer.text)
    assert check_again is not None
    assert f'href="/connect/{flow.flow_id}"' in check_again.group(1)
    assert check_again.group(2) == "Check again"
    assert all(address.startswith("/") for address in _addresses(answer.text))


@pytest.mark.parametrize(
    "link", ["/\\evil.example/x.png", "/\\/evil.example/x.png", "\\\\evil.example/x.png", "/images/\tx.png"]
)
async def test_an_image_path_a_browser_reads_as_another_origin_is_left_out(shim: Shim, link: str) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    offer = EntityOffer(id="p-9", name="Acme", network="Facebook", image_link=link)
    shim.offer(shim.flow(flow.flow_id), [offer])
    answer = await page(shim, flow)
    assert answer.status_code == 200
    assert "evil.example" not in answer.text
    assert "<img" not in answer.text


async def test_the_app_name_is_a_setting() -> None:
    async with open_shim(hosted_ui_app_name="Acme Social") as shim:
        flow = shim.new_flow()
        await came_back(shim, flow)
        assert "Acme Social" in (await page(shim, flow)).text


async def test_the_selection_page_is_a_form_of_the_offered_entities(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    shim.offer(shim.flow(flow.flow_id), ENTITIES)
    answer = await page(shim, flow)
    assert answer.status_code == 200
    fields = FormFields(answer.text)
    assert fields.main["data-status"] == "awaiting_selection"
    assert f'<form method="post" action="/connect/{flow.flow_id}/selection">' in answer.text
    assert fields.choices() == {"p-1": True, "p-2": True, "p-0": False}
    assert fields.value("csrf")
    assert re.search(r'<button type="submit">Connect</button>', answer.text)
    assert "Acme &lt;News&gt;" in answer.text  # escaped, never markup
    assert "acme" in text_of(answer.text)
    assert "already connected" in text_of(answer.text)
    assert OWN_IMAGE in answer.text
    assert FOREIGN_IMAGE not in answer.text
    labels = re.findall(r'<label for="([^"]+)">(.*?)</label>', answer.text, flags=re.S)
    assert [text_of(inner).strip().split(" ")[0] for _, inner in labels] == ["Acme", "Acme", "Acme"]


async def test_the_finished_page_names_the_connected_accounts_and_goes_back_to_return_url(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    offered = shim.offer(shim.flow(flow.flow_id), OFFERS)
    assert shim.store.submit_selection(offered, ["10795420"]).done
    shim.complete(offered, ["Acme News", "Acme Jobs"])
    answer = await page(shim, flow)
    fields = FormFields(answer.text)
    assert fields.main["data-status"] == "completed"
    assert "data-events" not in fields.main
    assert "Acme News" in answer.text
    assert "Acme Jobs" in answer.text
    link = re.search(r'<a id="continue"[^>]* href="([^"]+)"', answer.text)
    assert link is not None
    target = link.group(1).replace("&amp;", "&")
    assert target.startswith("https://app.example/done?")
    assert parse_qs(urlsplit(target).query) == {
        "tab": ["social"],
        "flow_id": [flow.flow_id],
        "status": ["completed"],
    }
    # the page's script follows the link after a moment; without JavaScript a <meta refresh> in <noscript>
    # does (a browser running the script never sees it: axe, meta-refresh)
    after = re.search(r'<a id="continue"[^>]* data-after="(\d+)"', answer.text)
    assert after is not None
    assert 0 < int(after.group(1)) < 3
    refresh = re.search(
        r'<noscript><meta http-equiv="refresh" content="(\d+);url=([^"]+)"></noscript>', answer.text
    )
    assert refresh is not None
    assert refresh.group(1) == after.group(1)
    assert refresh.group(2).replace("&amp;", "&") == target
    assert '<script src="/connect/static/connect.js" defer></script>' in answer.text


async def test_without_return_url_the_finished_page_says_the_window_can_be_closed(shim: Shim) -> None:
    flow = shim.new_flow(return_url=None)
    await shim.http.get(f"/v1/callback/{flow.flow_id}")  # denied
    answer = await page(shim, flow)
    assert 'id="continue"' not in answer.text
    assert "close this window" in answer.text


async def test_an_expired_flow_says_it_expired(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    assert shim.store.give_up(shim.flow(flow.flow_id), owner="").done
    answer = await page(shim, flow)
    assert FormFields(answer.text).main["data-status"] == FlowState.EXPIRED.value
    assert "expired" in answer.text
    assert "status=expired" in answer.text


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/connect/static/connect.css", "text/css"), ("/connect/static/connect.js", "text/javascript")],
)
async def test_the_stylesheet_and_script_are_served_by_the_shim(shim: Shim, path: str, kind: str) -> None:
    answer = await shim.http.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(kind)
    assert "http" not in re.sub(r"//.*|/\*.*?\*/", "", answer.text, flags=re.S)


async def test_a_reconnects_pages_say_it_is_a_reconnection(shim: Shim) -> None:
    plain = shim.new_flow()
    reconnecting = shim.store.create(new_flow_id(), "Facebook", "page", "crm-42", None, reconnects="003-1")
    for flow in (plain, reconnecting):
        await came_back(shim, flow)
    assert "Reconnecting" not in text_of((await page(shim, plain)).text)
    assert "Reconnecting a Facebook page" in text_of((await page(shim, reconnecting)).text)
