"""The working directory's `.env`: read into the environment where the environment sets nothing, as
docker compose reads it; a line that is no setting is one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import CLI
from worker.config.envfile import EnvFileError, read_env_file


def test_its_settings_fill_what_the_environment_does_not_set(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "REDIS_URL=redis://127.0.0.1:6390/3\n"
        "\n"
        "export CHANNEL_PREFIX='from-file'\n"
        'PUBLIC_BASE_URL="https://connect.example"\n'
        "BARE_KEY\n"
        "TOKEN_TTL_SECONDS=100\n"
        "TOKEN_TTL_SECONDS=200\n"
    )
    environ = {"CHANNEL_PREFIX": "from-environment"}
    added = read_env_file(env_file, environ)
    assert added == {
        "REDIS_URL": "redis://127.0.0.1:6390/3",
        "PUBLIC_BASE_URL": "https://connect.example",
        "TOKEN_TTL_SECONDS": "200",
    }
    assert environ == {"CHANNEL_PREFIX": "from-environment", **added}


def test_no_file_changes_nothing(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert read_env_file(tmp_path / ".env", environ) == {}
    assert environ == {}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("REDIS_URL=redis://x\nthis is not a setting\n", ".env line 2: not a KEY=VALUE setting"),
        (b"SHIM_API_KEYS=\xff\xfe\n", ".env could not be read: UnicodeDecodeError"),
    ],
)
def test_a_line_that_is_no_setting_is_named(tmp_path: Path, content: str | bytes, said: str) -> None:
    env_file = tmp_path / ".env"
    if isinstance(content, bytes):
        env_file.write_bytes(content)
    else:
        env_file.write_text(content)
    environ: dict[str, str] = {}
    with pytest.raises(EnvFileError) as raised:
        read_env_file(env_file, environ)
    assert str(raised.value) == f"{env_file.parent}/{said}"
    assert environ == {}


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value for key, value in os.environ.items() if key not in ("CHANNEL_PREFIX", "TOKEN_TTL_SECONDS")
    }
    # a Redis nobody answers on: a command that started after all would take no one's tasks
    nowhere = {"REDIS_URL": "redis://127.0.0.1:1/0", "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run(
        argv, cwd=cwd, env={**clean, **nowhere, **env}, capture_output=True, text=True, timeout=30
    )


def test_the_commands_read_it_from_their_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SHIM_API_KEYS=a-caller-key-long-enough-000\nTOKEN_TTL_SECONDS=-5\n")
    refused = _run([*CLI, "shim", "--port", "1"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("oktopost-connect: invalid setting TOKEN_TTL_SECONDS"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_bad_line_stops_a_command_with_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SHIM_API_KEYS\nnot a setting at all\n")
    refused = _run([*CLI, "worker"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == "oktopost-connect: .env line 2: not a KEY=VALUE setting\n"


def test_the_celery_app_reads_it_too(tmp_path: Path) -> None:
    """`celery -A worker ...` reads its settings through get_settings, which reads the .env first; the
    environment still wins over it."""
    (tmp_path / ".env").write_text("CHANNEL_PREFIX=fromfile\nTOKEN_TTL_SECONDS=120\n")
    code = (
        "from worker.config.settings import get_settings\n"
        "settings = get_settings()\n"
        "print(settings.channel_prefix, settings.token_ttl_seconds)"
    )
    read = _run([sys.executable, "-c", code], tmp_path, TOKEN_TTL_SECONDS="90")
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["fromfile", "90"]
