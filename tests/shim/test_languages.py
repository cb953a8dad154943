"""The hosted pages speak English, German, French and Spanish from gettext catalogs: every text of every
template is in each catalog, translated; the flow's `locale` or the browser's Accept-Language picks one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from jinja2 import Environment

from api_shim import languages
from tests.support.browsers import FormFields, came_back, page, text_of
from tests.support.shim import CALLER, OFFERS, RETURN_URL, Shim, new_flow_id

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "api_shim" / "templates"
TRANSLATED = [language for language in languages.LANGUAGES if language != languages.DEFAULT_LANGUAGE]
PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)s")


def extracted() -> dict[str, set[str]]:
    """Every message the shim's code and templates mark, as Babel extracts them (with its flags)."""
    with (languages.LOCALES_DIR / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    found: dict[str, set[str]] = {}
    for _, _, message, _, _ in extract_from_dir(
        str(ROOT), method_map, options_map, keywords={"_": None, "N_": None, "gettext": None}
    ):
        assert isinstance(message, str), message
        found[message] = set(PLACEHOLDER.findall(message))
    return found


def catalog(language: str) -> dict[str, tuple[str, bool]]:
    path = languages.LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        entries = read_po(source, locale=language)
    return {str(entry.id): (str(entry.string), entry.fuzzy) for entry in entries if entry.id}


def test_the_marked_messages_are_found() -> None:
    found = extracted()
    assert "Connect" in found  # a template's
    assert "Choose the pages to connect" in found  # the code's
    assert len(found) > 40


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated_in_each_catalog(language: str) -> None:
    messages, translated = extracted(), catalog(language)
    missing = sorted(set(messages) - set(translated))
    assert not missing, f"{language}: not in the catalog (pybabel update, then translate): {missing}"
    untranslated = [message for message, (text, fuzzy) in translated.items() if not text or fuzzy]
    assert not untranslated, f"{language}: untranslated or fuzzy: {untranslated}"
    stale = sorted(set(translated) - set(messages))
    assert not stale, f"{language}: messages no page says any more: {stale}"
    for message, placeholders in messages.items():
        text = translated[message][0]
        assert set(PLACEHOLDER.findall(text)) == placeholders, f"{language}: {message!r} -> {text!r}"


def test_no_template_says_anything_outside_a_message() -> None:
    """Words written in a template outside {% trans %} or _() would stay English in every language."""
    environment = Environment(extensions=["jinja2.ext.i18n"])
    for template in sorted(TEMPLATES.glob("*.html")):
        inside, outside = 0, []
        for _, kind, value in environment.lex(template.read_text()):
            if kind == "name" and value in ("trans", "endtrans"):
                inside += 1 if value == "trans" else -1
            # what a template writes itself, outside messages; an expression's value stands as 0
            outside.append(value if kind == "data" and not inside else " 0 ")
        words = re.sub(r"<[^>]*>|&\w+;", " ", "".join(outside))
        loose = re.findall(r"[A-Za-z]{2,}", words)
        assert not loose, f"{template.name}: untranslatable words {loose}"


def test_a_locale_tag_names_its_language() -> None:
    assert languages.supported("de") == "de"
    assert languages.supported("es-419") == "es"
    assert languages.supported("FR_ca") == "fr"
    for unknown in ("nl", "english", "", "de-", "d"):
        assert languages.supported(unknown) is None


def test_the_flow_locale_comes_first_then_the_browser_by_preference_then_english() -> None:
    assert languages.choose("fr", "de-DE,de;q=0.9") == "fr"
    assert languages.choose(None, "nl-NL, nl;q=0.9, es;q=0.8, de;q=0.7") == "es"
    assert languages.choose(None, "de;q=0.5, fr;q=0.9") == "fr"
    assert languages.choose(None, "fr;q=0, de") == "de"
    assert languages.choose(None, "nl, ja") == "en"
    assert languages.choose(None, None) == "en"
    assert languages.choose(None, ";;;q=abc,,") == "en"


async def test_the_page_speaks_the_browsers_language(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    shim.offer(shim.flow(flow.flow_id), OFFERS)
    shim.http.headers["Accept-Language"] = "de-CH, de;q=0.9, en;q=0.5"
    answer = await page(shim, flow)
    assert '<html lang="de">' in answer.text
    assert '<button type="submit">Verbinden</button>' in answer.text
    assert "Wählen Sie die Seiten, die verbunden werden sollen" in text_of(answer.text)


async def test_the_flows_locale_outranks_the_browser(shim: Shim) -> None:
    created = await shim.http.post(
        "/v1/authorizations",
        json={"network": "facebook", "type": "page", "return_url": RETURN_URL, "locale": "es"},
        headers=CALLER,
    )
    assert created.status_code == 201, created.text
    flow = shim.flow(created.json()["flow_id"])
    assert flow.locale == "es"
    await shim.http.get(f"/v1/callback/{flow.flow_id}")  # denied
    shim.http.headers["Accept-Language"] = "fr"
    answer = await page(shim, flow)
    assert '<html lang="es">' in answer.text
    assert FormFields(answer.text).main["data-status"] == "failed"
    assert "Acceso denegado" in answer.text
    assert ">Continuar</a>" in answer.text


async def test_an_unknown_locale_is_refused_before_oktopost_is_asked(shim: Shim) -> None:
    for locale in ("nl", "klingon", "d", ""):
        answer = await shim.http.post(
            "/v1/authorizations", json={"network": "facebook", "locale": locale}, headers=CALLER
        )
        assert answer.status_code == 422, locale
        assert answer.json()["error"]["code"] == "unsupported_locale"
    assert shim.oktopost.requests == []


async def test_the_error_pages_speak_the_browsers_language(shim: Shim) -> None:
    shim.http.headers["Accept-Language"] = "fr-FR"
    answer = await shim.http.get(f"/connect/{new_flow_id()}")
    assert answer.status_code == 404
    assert '<html lang="fr">' in answer.text
    assert "Connexion introuvable" in answer.text
    flow = shim.new_flow()
    async with shim.another_browser() as other:
        other.headers["Accept-Language"] = "es"
        refused = await other.get(f"/connect/{flow.flow_id}")
    assert refused.status_code == 403
    assert '<html lang="es">' in refused.text
