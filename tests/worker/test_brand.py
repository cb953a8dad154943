"""A tenant's brand is checked at start-up: a colour white text is readable on, a PNG or SVG logo of at most
64 KB (relative to the tenants file), an https support link; the default tenant's comes from HOSTED_UI_*."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.brand import contrast, contrast_with_white, tint_readable_on
from worker.config.settings import ConfigError, load_settings

KEY = "acme-caller-key-0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 4 4"><rect/></svg>'


def tenants_file(folder: Path, brand: str) -> Path:
    path = folder / "tenants.toml"
    path.write_text(
        f"""
[tenants.acme]
api_keys = ["{KEY}"]
oktopost = {{ account_id = "acme-account", api_key = "acme-oktopost-key" }}

[tenants.acme.brand]
{brand}
"""
    )
    return path


def test_white_text_contrast_is_wcags() -> None:
    assert contrast_with_white("#000000") == pytest.approx(21.0)
    assert contrast_with_white("#ffffff") == pytest.approx(1.0)
    assert contrast_with_white("#767676") == pytest.approx(4.54, abs=0.01)  # the lightest AA grey


def test_a_tenants_brand_is_read_with_its_logo_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "acme.svg").write_bytes(SVG)
    brand = 'name = "Acme Social"\ncolor = "#8A1538"\nlogo = "acme.svg"\nsupport_url = "https://help.acme.example"'
    settings = load_settings(tenants_file=tenants_file(tmp_path, brand), hosted_ui_app_name="Connect")
    acme = settings.brand("acme")
    assert (acme.name, acme.color, acme.support_url) == (
        "Acme Social",
        "#8a1538",
        "https://help.acme.example",
    )
    assert acme.logo is not None
    assert (acme.logo.media_type, acme.logo.content) == ("image/svg+xml", SVG)
    assert settings.brand("default").name == "Connect"


def test_what_a_tenants_brand_leaves_out_is_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "logo.png").write_bytes(PNG)
    settings = load_settings(
        tenants_file=tenants_file(tmp_path, 'name = "Acme"'),
        hosted_ui_color="#0B5D1E",
        hosted_ui_logo=str(tmp_path / "logo.png"),
        hosted_ui_support_url="https://support.example",
    )
    acme = settings.brand("acme")
    assert (acme.name, acme.color, acme.support_url) == ("Acme", "#0b5d1e", "https://support.example")
    assert acme.logo is not None
    assert acme.logo.media_type == "image/png"


@pytest.mark.parametrize(
    ("brand", "refusal"),
    [
        (
            'color = "#F2A900"',
            r"tenant acme: brand\.color: white text on #F2A900 has a contrast of 2\.01:1, under WCAG AA",
        ),
        ('color = "blue"', r"tenant acme: brand\.color: expected a colour as #RRGGBB"),
        (
            'support_url = "http://help.acme.example"',
            r"tenant acme: brand\.support_url: expected an https URL",
        ),
        ('logo = "absent.png"', r"tenant acme: brand\.logo: cannot read .*absent\.png"),
        ('logo = "big.png"', r"tenant acme: brand\.logo: .*big\.png is larger than 64 KB"),
        ('logo = "page.html"', r"tenant acme: brand\.logo: .*page\.html is neither a PNG nor an SVG file"),
        ('slogan = "Connect!"', r"tenant acme: brand\.slogan: extra inputs are not permitted"),
    ],
)
def test_a_bad_brand_stops_start_up_with_one_line(tmp_path: Path, brand: str, refusal: str) -> None:
    (tmp_path / "big.png").write_bytes(PNG + b"\x00" * 64 * 1024)
    (tmp_path / "page.html").write_bytes(b"<html><script>alert(1)</script></html>")
    with pytest.raises(ConfigError, match=rf"^invalid setting TENANTS_FILE: {refusal}") as refused:
        load_settings(tenants_file=tenants_file(tmp_path, brand))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("setting", "value", "refusal"),
    [
        ("hosted_ui_color", "#FFCC00", "HOSTED_UI_COLOR: white text on #FFCC00"),
        ("hosted_ui_support_url", "ftp://help.example", "HOSTED_UI_SUPPORT_URL: expected an https URL"),
        ("hosted_ui_logo", "/nonexistent/logo.svg", "HOSTED_UI_LOGO: cannot read /nonexistent/logo.svg"),
    ],
)
def test_a_bad_default_brand_setting_is_named(setting: str, value: str, refusal: str) -> None:
    with pytest.raises(ConfigError, match=f"^invalid setting {refusal}"):
        load_settings(**{setting: value})


@pytest.mark.parametrize("color", ["#1f5fd6", "#8a1538", "#000000", "#767676", "#0b5d1e"])
def test_a_brand_colours_tint_for_dark_links_reads_on_the_dark_card(color: str) -> None:
    dark_card = "#1b2029"
    tint = tint_readable_on(color, dark_card)
    assert contrast(tint, dark_card) >= 4.5
    assert tint != "#ffffff"  # a tint of the colour, not white in its place
    assert tint_readable_on("#9fc0ff", dark_card) == "#9fc0ff"  # a colour readable as it is stays


def test_the_stylesheets_dark_link_is_the_default_accents_tint() -> None:
    from api_shim.pages import DARK_CARD, DEFAULT_ACCENT

    css = (Path(__file__).parents[2] / "api_shim" / "static" / "connect.css").read_text()
    light, dark = css.split("@media (prefers-color-scheme: dark)", 1)
    assert f"--accent: {DEFAULT_ACCENT};" in light
    assert f"--link: {DEFAULT_ACCENT};" in light
    assert f"--card: {DARK_CARD};" in dark
    assert f"--link: {tint_readable_on(DEFAULT_ACCENT, DARK_CARD)};" in dark
