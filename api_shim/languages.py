"""The languages the hosted pages speak, and which one a page speaks: the flow's `locale`, else the
browser's Accept-Language, else English.

Every text of the pages is an English message id; its translations live in gettext catalogs,
api_shim/locales/{language}/LC_MESSAGES/messages.po, extracted with Babel (api_shim/locales/babel.cfg)
and compiled here when first used. English needs no catalog: its message ids are its texts.
"""

from __future__ import annotations

import re
from functools import cache
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "LOCALES_DIR", "N_", "choose", "supported", "translations"]

DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "de", "fr", "es")
LOCALES_DIR = Path(__file__).parent / "locales"
DOMAIN = "messages"

# a language tag (de, de-AT, es_419, fr-CA): its first subtag picks the language
_TAG = re.compile(r"([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*")
_QUALITY = re.compile(r"q=([01](?:\.\d{0,3})?)")


def N_(message: str) -> str:  # gettext's own name for a deferred message
    """Marks a message for extraction where it is defined; it is translated where it is shown."""
    return message


def supported(tag: str) -> str | None:
    """The language of a tag such as `de` or `de-AT` when the pages speak it, else None."""
    match = _TAG.fullmatch(tag.strip())
    if match is None:
        return None
    language = match.group(1).lower()
    return language if language in LANGUAGES else None


def choose(locale: str | None, accept_language: str | None) -> str:
    """The flow's own locale when it has one, else the browser's most preferred language that the pages
    speak (Accept-Language, by its q-values), else English."""
    if locale and (language := supported(locale)):
        return language
    for tag in _preferred(accept_language or ""):
        if language := supported(tag):
            return language
    return DEFAULT_LANGUAGE


def _preferred(header: str) -> list[str]:
    """Accept-Language's tags, most preferred first (a tag of q=0 is refused, so left out)."""
    weighed: list[tuple[float, int, str]] = []
    for position, part in enumerate(header[:1024].split(",")):
        tag, _, parameters = part.partition(";")
        quality = _QUALITY.search(parameters.replace(" ", ""))
        weight = float(quality.group(1)) if quality else 1.0
        if weight > 0 and tag.strip():
            weighed.append((-weight, position, tag.strip()))
    return [tag for _, _, tag in sorted(weighed)]


@cache
def translations(language: str) -> NullTranslations:
    """The compiled catalog of `language` (English: the message ids themselves)."""
    if language == DEFAULT_LANGUAGE:
        return NullTranslations()
    with (LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as source:
        catalog = read_po(source, locale=language, domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)
