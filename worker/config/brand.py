"""A tenant's brand on the hosted pages: the name shown, the accent colour, a logo, a support link.

The tenant `default` takes HOSTED_UI_APP_NAME, HOSTED_UI_COLOR, HOSTED_UI_LOGO and HOSTED_UI_SUPPORT_URL;
a tenants file gives each tenant a `[tenants.NAME.brand]` table, whose missing fields are the default's.
Everything is checked at start-up: a colour that white text is not readable on (WCAG AA, 4.5:1), a logo
that is not a PNG or SVG file of at most 64 KB (read into memory then: the shim serves it itself), a
support link that is not https.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["MAX_LOGO_BYTES", "Brand", "Logo", "check_color", "check_support_url", "read_logo"]

MAX_LOGO_BYTES = 64 * 1024
MIN_CONTRAST_WITH_WHITE = 4.5  # WCAG AA for normal text: buttons carry white text on the colour
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SVG_START = re.compile(rb"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!DOCTYPE[^>]*>\s*)?<svg[\s>]", re.S)


@dataclass(frozen=True, slots=True)
class Logo:
    content: bytes
    media_type: str  # image/png or image/svg+xml


def contrast_with_white(color: str) -> float:
    """WCAG's contrast ratio of white text on `color` (#RRGGBB)."""
    return contrast("#ffffff", color)


def contrast(first: str, second: str) -> float:
    """WCAG's contrast ratio of two colours (#RRGGBB), the lighter's luminance over the darker's."""
    lighter, darker = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _luminance(color: str) -> float:
    channels = [int(color[index : index + 2], 16) / 255 for index in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def tint_readable_on(color: str, background: str) -> str:
    """`color` mixed with white, as little as WCAG AA's 4.5:1 against `background` (a dark one) needs: a
    brand colour that carries white text is too dark for text on a dark page; its tint keeps its hue."""
    red, green, blue = (int(color[index : index + 2], 16) for index in (1, 3, 5))
    for step in range(21):
        share = step / 20
        mixed = "#" + "".join(f"{round(c + (255 - c) * share):02x}" for c in (red, green, blue))
        if contrast(mixed, background) >= MIN_CONTRAST_WITH_WHITE:
            return mixed
    return "#ffffff"


def check_color(color: str) -> str:
    if not _COLOR.fullmatch(color):
        raise ValueError("expected a colour as #RRGGBB")
    ratio = contrast_with_white(color)
    if ratio < MIN_CONTRAST_WITH_WHITE:
        raise ValueError(
            f"white text on {color} has a contrast of {ratio:.2f}:1, under WCAG AA's 4.5:1: "
            "choose a darker colour"
        )
    return color.lower()


def read_logo(path: Path) -> Logo:
    """The logo file, read once: a PNG or an SVG of at most 64 KB."""
    try:
        with path.open("rb") as file:
            content = file.read(MAX_LOGO_BYTES + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    if len(content) > MAX_LOGO_BYTES:
        raise ValueError(f"{path} is larger than 64 KB")
    if content.startswith(_PNG_SIGNATURE):
        return Logo(content, "image/png")
    if _SVG_START.match(content.removeprefix(b"\xef\xbb\xbf")):
        return Logo(content, "image/svg+xml")
    raise ValueError(f"{path} is neither a PNG nor an SVG file")


def check_support_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username is not None:
        raise ValueError("expected an https URL (without user information)")
    return url


class Brand(BaseModel):
    """What the hosted pages show of one tenant; every field optional (the default's is used)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str | None = Field(default=None, min_length=1, max_length=64)
    color: str | None = None
    logo: Logo | None = None
    support_url: str | None = Field(default=None, max_length=2048)

    @field_validator("color")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        return None if value is None else check_color(value)

    @field_validator("logo", mode="before")
    @classmethod
    def _logo_file(cls, value: object) -> object:
        return read_logo(Path(value)) if isinstance(value, (str, Path)) else value

    @field_validator("support_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return None if value is None else check_support_url(value)

    def over(self, default: Brand) -> Brand:
        """This brand, with the default's fields where this one has none."""
        return Brand.model_construct(
            name=self.name or default.name,
            color=self.color or default.color,
            logo=self.logo or default.logo,
            support_url=self.support_url or default.support_url,
        )
