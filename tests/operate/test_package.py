"""What ships: a wheel built from the checkout holds the product (worker, api_shim, sandbox, cli) and no
bench, which runs from a checkout only; the image's build context leaves the bench out too."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration


def test_a_wheel_built_from_the_checkout_holds_the_product_and_no_bench(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("oktopost_connect-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if "/" in name and ".dist-info" not in name}
    assert tops == {"worker", "api_shim", "sandbox", "cli"}
    assert "worker/scripts/transition.lua" in names
    assert "worker/tasks/celery_tasks.py" in names
    # the hosted pages' catalogs, which the shim compiles when it first speaks a language
    for language in ("de", "fr", "es"):
        assert f"api_shim/locales/{language}/LC_MESSAGES/messages.po" in names
    assert not [name for name in names if "bench" in name.split("/")[0] or "/bench/" in name]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "bench" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_build_context_leaves_the_bench_out() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!bench" not in ignore
    assert "*" in ignore
    assert "COPY bench" not in (ROOT / "Dockerfile").read_text()


def test_the_product_command_has_no_bench() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "cli", "bench"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert answer.returncode == 2
    assert "unknown command 'bench'" in answer.stderr
