"""`oktopost-connect` itself: its version, and what `up` and `demo` say when there is no Redis to use."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from cli.main import main
from tests.support.processes import CLI, ROOT, free_port


def test_version_prints_the_installed_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"oktopost-connect {version('oktopost-connect')}\n"
    result = subprocess.run([*CLI, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"oktopost-connect {version('oktopost-connect')}\n",
        "",
    )


@pytest.mark.parametrize("command", ["up", "demo"])
def test_without_any_redis_up_and_demo_say_what_to_install(command: str, tmp_path: Path) -> None:
    # no REDIS_URL that answers, no redis-server on PATH, and a fakeredis that cannot be imported
    hidden = tmp_path / "hidden" / "fakeredis"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('fakeredis hidden by the test')\n")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        **os.environ,
        "PATH": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(hidden.parent), str(ROOT)]),
        "REDIS_URL": closed,
        "CELERY_BROKER_URL": closed,
    }
    env.pop("OKC_EMBEDDED_REDIS", None)
    arguments = ["--port", str(free_port())] if command == "up" else []
    result = subprocess.run(
        [*CLI, command, *arguments], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"oktopost-connect {command}: no Redis")
    assert result.stdout == ""
    assert "pip install 'oktopost-connect[tools]'" in line
