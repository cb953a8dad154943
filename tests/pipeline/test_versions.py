"""On Celery or kombu releases the tests do not cover, nothing reaches into their internals: kombu's
transport is left alone, and that is said once."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest
from kombu.transport import redis as kombu_redis

from worker.broker import repair_redis_transport
from worker.versions import TESTED_RANGES, LibraryVersions

TESTED = LibraryVersions(celery="5.7.0", kombu="5.7.0")
NEWER_CELERY = LibraryVersions(celery="5.8.1", kombu="5.7.0")
OLDER_KOMBU = LibraryVersions(celery="5.7.0", kombu="5.3.4")


def test_versions_outside_the_tested_minors_are_named() -> None:
    assert TESTED.tested and TESTED.untested() == []
    assert LibraryVersions(celery="5.7.12", kombu="5.7.0rc2").tested
    assert NEWER_CELERY.untested() == ["celery 5.8.1"]
    assert OLDER_KOMBU.untested() == ["kombu 5.3.4"]
    assert LibraryVersions(celery="6.0.0", kombu="unknown").untested() == ["celery 6.0.0", "kombu unknown"]


def test_the_tested_ranges_are_the_bounds_pyproject_declares() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = {}
    for requirement in pyproject["project"]["dependencies"]:
        match = re.fullmatch(r"(celery|kombu)(?:\[\w+\])?>=(\d+)\.(\d+),<(\d+)\.(\d+)", requirement)
        if match:
            lowest, beyond = match.groups()[1:3], match.groups()[3:5]
            declared[match.group(1)] = (tuple(map(int, lowest)), tuple(map(int, beyond)))
    assert declared == TESTED_RANGES


def test_untested_releases_leave_kombus_transport_as_it_ships(caplog: pytest.LogCaptureFixture) -> None:
    before = (kombu_redis.Channel._connparams, kombu_redis.Channel._create_client)
    with caplog.at_level(logging.WARNING, logger="worker.broker"):
        assert repair_redis_transport(NEWER_CELERY) is False
    assert (kombu_redis.Channel._connparams, kombu_redis.Channel._create_client) == before
    warnings = [record.getMessage() for record in caplog.records if record.name == "worker.broker"]
    assert len(warnings) == 1 and "celery 5.8.1" in warnings[0] and "transport" in warnings[0]
    assert repair_redis_transport(TESTED) is True
