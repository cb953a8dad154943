"""TENANTS_FILE: tenants read from TOML beside the environment's `default`; a malformed file is refused with
one line naming the tenant and the field, by the settings and by every command that reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.config.settings import ConfigError, load_settings

STRONG = "a-caller-key-long-enough-0123"
ACME_KEY = "acme-caller-key-0123456789abcdef"
GLOBEX_KEY = "globex-caller-key-0123456789abcd"
ACME_OKTOPOST_KEY = "acme-oktopost-api-key-secret"

VALID = f"""
[tenants.acme]
api_keys = ["{ACME_KEY}"]
allowed_return_urls = ["https://app.acme.example"]
oktopost.account_id = "acme-account"
oktopost.api_key = "{ACME_OKTOPOST_KEY}"
oktopost.base_url = "https://eu-api.oktopost.com/v2"
oktopost.rate_limit = "30/minute"
oktopost.daily_limit = 5000

[tenants.globex]
api_keys = ["{GLOBEX_KEY}"]
oktopost = {{ account_id = "globex-account", api_key = "globex-oktopost-api-key" }}
"""


def tenants_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_a_valid_file_names_its_tenants_beside_the_default_one(tmp_path: Path) -> None:
    settings = load_settings(shim_api_keys=STRONG, tenants_file=tenants_file(tmp_path, VALID))
    assert sorted(tenant.name for tenant in settings.tenants) == ["acme", "default", "globex"]
    acme = settings.tenants.of_key(ACME_KEY)
    assert acme is not None
    assert acme.name == "acme"
    assert acme.allowed_return_urls == ["https://app.acme.example"]
    assert acme.oktopost.base_url == "https://eu-api.oktopost.com"  # /v2 as Oktopost's docs write it
    assert acme.oktopost.rate == (30, 60)
    assert acme.oktopost.daily_limit == 5000
    globex = settings.tenants.get("globex")
    assert globex is not None
    assert (globex.oktopost.base_url, globex.oktopost.rate, globex.oktopost.daily_limit) == (
        "https://api.oktopost.com",
        (60, 60),
        20000,
    )
    assert settings.tenants.of_key(STRONG).name == "default"  # type: ignore[union-attr]
    assert settings.tenants.of_key("not-a-key-of-anyone-0123456789") is None
    assert ACME_OKTOPOST_KEY not in repr(settings) + repr(settings.tenants)


def test_without_the_environments_keys_the_file_alone_names_the_tenants(tmp_path: Path) -> None:
    settings = load_settings(tenants_file=tenants_file(tmp_path, VALID))
    assert sorted(tenant.name for tenant in settings.tenants) == ["acme", "globex"]


def test_without_a_file_the_default_tenant_is_todays_settings() -> None:
    settings = load_settings(
        shim_api_keys=STRONG, oktopost_account_id="acct-7", allowed_return_urls="https://app.example"
    )
    (tenant,) = settings.tenants
    assert tenant.name == "default"
    assert tenant.oktopost.account_id == "acct-7"
    assert tenant.allowed_return_urls == ["https://app.example"]


ACME = '[tenants.acme]\napi_keys = ["' + ACME_KEY + '"]\n'
ACME_ACCOUNT = 'oktopost = { account_id = "acme-account", api_key = "acme-oktopost-key" }\n'


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            ACME + 'oktopost = { account_id = "acme-account" }\n',
            "tenant acme: oktopost.api_key: field required",
        ),
        (ACME, "tenant acme: oktopost: field required"),
        ("[tenants.acme]\n" + ACME_ACCOUNT, "tenant acme: api_keys: field required"),
        (
            '[tenants.acme]\napi_keys = ["short"]\n' + ACME_ACCOUNT,
            "tenant acme: api_keys: a caller key must be at least 24",
        ),
        (
            '[tenants.acme]\napi_keys = ["change-me-to-a-random-caller-key"]\n' + ACME_ACCOUNT,
            "tenant acme: api_keys: a caller key is still a shipped placeholder",
        ),
        (
            ACME + 'oktopost = { account_id = "acme-account", api_key = "change-me-oktopost-key" }\n',
            "tenant acme: oktopost.api_key: is still a shipped placeholder",
        ),
        (
            ACME + 'oktopost = { account_id = "a", api_key = "k", base_url = "http://api.oktopost.com" }\n',
            "tenant acme: oktopost.base_url: must be https",
        ),
        (
            ACME
            + 'oktopost = { account_id = "a", api_key = "k", base_url = "https://api.oktopost.com/v3" }\n',
            "tenant acme: oktopost.base_url: expected Oktopost's base URL",
        ),
        (
            ACME + 'oktopost = { account_id = "a", api_key = "k", rate_limit = "lots" }\n',
            "tenant acme: oktopost.rate_limit: expected a rate such as 60/minute",
        ),
        (
            ACME + 'oktopost = { account_id = "a", api_key = "k", daily_limit = 0 }\n',
            "tenant acme: oktopost.daily_limit:",
        ),
        (
            ACME + 'oktopost = { account_id = "a:b", api_key = "k" }\n',
            "tenant acme: oktopost.account_id: expected letters, digits",
        ),
        (ACME + ACME_ACCOUNT + 'colour = "blue"\n', "tenant acme: colour: extra inputs are not permitted"),
        ('[tenants."ac me"]\napi_keys = ["' + ACME_KEY + '"]\n' + ACME_ACCOUNT, "tenant 'ac me': name:"),
        (
            ACME + ACME_ACCOUNT + '[tenants.globex]\napi_keys = ["' + ACME_KEY + '"]\n' + ACME_ACCOUNT,
            "tenant globex: api_keys: a key is also tenant acme's",
        ),
        (
            ACME
            + ACME_ACCOUNT
            + '[tenants.globex]\napi_keys = ["'
            + GLOBEX_KEY
            + '"]\noktopost = { account_id = "acme-account", api_key = "another-key" }\n',
            "tenant globex: oktopost.api_key: account acme-account is described otherwise by tenant acme",
        ),
        ("[tenants]\n", "tenants: dictionary should have at least 1 item"),
        ("[tenants.acme\n", "is not valid TOML"),
    ],
)
def test_a_malformed_file_is_refused_with_one_line_naming_tenant_and_field(
    tmp_path: Path, text: str, line: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(tenants_file=tenants_file(tmp_path, text))
    message = str(refused.value)
    assert message.startswith("invalid setting TENANTS_FILE: ")
    assert line in message
    assert "\n" not in message
    assert "acme-oktopost-key" not in message
    assert "another-key" not in message
    assert ACME_KEY not in message


def test_a_file_that_is_not_utf8_is_refused_with_one_line_naming_the_setting_not_its_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_bytes(
        (ACME + ACME_ACCOUNT).replace("acme-oktopost-key", "acme-oktopost-k\xffey").encode("latin-1")
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(tenants_file=path)
    message = str(refused.value)
    assert message.startswith(f"invalid setting TENANTS_FILE: {path} is not UTF-8 text (byte ")
    assert "\n" not in message
    assert "oktopost-k" not in message


def test_a_caller_key_of_the_environment_and_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tenant acme: api_keys: a key is also tenant default's"):
        load_settings(shim_api_keys=ACME_KEY, tenants_file=tenants_file(tmp_path, VALID))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TENANTS_FILE: cannot read .*absent.toml: No such file"):
        load_settings(tenants_file=tmp_path / "absent.toml")


@pytest.mark.parametrize("command", ["shim", "worker", "up"])
def test_the_command_exits_2_with_one_line_on_a_malformed_file(tmp_path: Path, command: str) -> None:
    path = tenants_file(tmp_path, ACME + 'oktopost = { account_id = "acme-account" }\n')
    env = {**os.environ, "TENANTS_FILE": str(path), "SHIM_API_KEYS": STRONG}
    finished = subprocess.run(
        [sys.executable, "-m", "cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert finished.returncode == 2
    (line,) = finished.stderr.strip().splitlines()
    assert line.startswith("oktopost-connect")
    assert line.endswith(": invalid setting TENANTS_FILE: tenant acme: oktopost.api_key: field required")


def test_a_file_tenant_named_default_is_refused_beside_the_environments(tmp_path: Path) -> None:
    text = VALID.replace("[tenants.globex]", "[tenants.default]")
    assert sorted(t.name for t in load_settings(tenants_file=tenants_file(tmp_path, text)).tenants) == [
        "acme",
        "default",
    ]
    with pytest.raises(ConfigError, match="tenant default: is named twice"):
        load_settings(shim_api_keys=STRONG, tenants_file=tenants_file(tmp_path, text))


def test_require_start_is_per_tenant_in_the_file_and_require_start_for_default(tmp_path: Path) -> None:
    text = VALID.replace("[tenants.globex]\n", "[tenants.globex]\nrequire_start = true\n")
    settings = load_settings(
        shim_api_keys=STRONG, tenants_file=tenants_file(tmp_path, text), require_start=True
    )
    assert {tenant.name: tenant.require_start for tenant in settings.tenants} == {
        "acme": False,
        "default": True,
        "globex": True,
    }
