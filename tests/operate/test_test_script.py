"""scripts/test, the README's test command: it installs what the tests need beyond Python when it can,
says exactly what to run when it cannot, starts a Redis when none answers, then runs pytest. Each case
runs the real script with stand-ins on PATH for apt-get, id, redis and python, so nothing is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.processes import ROOT

SCRIPT = ROOT / "scripts" / "test"
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")  # as the skewed-clock test needs


def _machine(tmp_path: Path, *, uid: int, present: set[str]) -> Path:
    """A PATH of stand-ins: `present` of chromium and redis-server (promtool is always there); every call
    written to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("dirname", "seq", "sleep", "setsid"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    stand_ins = {
        "id": f'echo "$@" >/dev/null; echo {uid}',
        "apt-get": f'echo "apt-get $*" >> {log}',
        "python": f'echo "python $*" >> {log}',
        "redis-cli": f"[ -e {tmp_path}/redis-up ]",
        "redis-server": f'echo "redis-server $*" >> {log}; : > {tmp_path}/redis-up',
        "chromium": "true",
        "promtool": "true",
    }
    for name, body in stand_ins.items():
        if name in ("redis-server", "chromium") and name not in present:
            continue
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, bin_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    log = tmp_path / "calls.log"
    return done, log.read_text().splitlines() if log.exists() else []


def test_without_root_it_says_what_to_install_and_runs_no_test(tmp_path: Path) -> None:
    bin_dir = _machine(tmp_path, uid=1000, present=set())
    done, calls = _run(tmp_path, bin_dir)
    assert done.returncode == 1
    wanted = ["chromium", *([] if FAKETIME.exists() else ["faketime"]), "redis-server"]
    assert f"sudo apt-get update && sudo apt-get install -y {' '.join(wanted)}" in done.stderr
    assert calls == []  # nothing installed, no Redis, no pytest


def test_as_root_it_installs_what_is_missing_starts_redis_then_runs_pytest_with_its_arguments(
    tmp_path: Path,
) -> None:
    bin_dir = _machine(tmp_path, uid=0, present={"redis-server"})
    done, calls = _run(tmp_path, bin_dir, "-n", "0", "tests/shim")
    assert done.returncode == 0, done.stderr
    installed = ["chromium", *([] if FAKETIME.exists() else ["faketime"])]
    assert calls == [
        "apt-get update -qq",
        f"apt-get install -y -qq {' '.join(installed)}",
        "redis-server --port 6379 --save  --appendonly no",
        "python -m pytest -q -n 0 tests/shim",
    ]


def test_with_everything_there_it_only_runs_pytest(tmp_path: Path) -> None:
    bin_dir = _machine(tmp_path, uid=0, present={"redis-server", "chromium"})
    (tmp_path / "redis-up").touch()
    done, calls = _run(tmp_path, bin_dir, "-m", "not integration")
    assert done.returncode == 0, done.stderr
    faketime = [] if FAKETIME.exists() else ["apt-get update -qq", "apt-get install -y -qq faketime"]
    assert calls == [*faketime, "python -m pytest -q -m not integration"]


def test_readme_and_ci_run_the_tests_through_the_script() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3\.11 -m venv .*$", readme, flags=re.MULTILINE)[:2]
    assert commands[0].endswith("&& oktopost-connect demo")
    assert commands[1].endswith("&& scripts/test")
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text().splitlines()
    assert SCRIPT.stat().st_mode & 0o111
