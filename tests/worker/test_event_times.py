"""worker.events.utc_timestamp: the events' `at` as datetime formats it, at a third of its cost."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from worker.events import utc_timestamp
from worker.replies import hash_of


def as_datetime_formats(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_every_moment_reads_as_datetime_reads_it_edges_of_a_second_included() -> None:
    rng = random.Random(7)
    edges = (0.0, 0.0005, 0.0000005, 0.5, 0.9995, 0.999999, 0.9999995, 0.99999949)
    moments = [rng.uniform(0, 4e9) for _ in range(20_000)]
    moments += [float(int(rng.uniform(0, 4e9))) + edge for edge in edges for _ in range(500)]
    moments += [1_790_000_000.9999996, 0.0, 86399.9999999]
    for moment in moments:  # one after another, so a cached second is reused and replaced
        assert utc_timestamp(moment) == as_datetime_formats(moment), moment


def test_now_is_the_clock_s_moment() -> None:
    before = time.time()
    now = utc_timestamp()
    after = time.time()
    assert as_datetime_formats(before)[:-5] <= now[:-5] <= as_datetime_formats(after)[:-5]
    assert now.endswith("Z")
    assert len(now) == len("2026-12-06T20:51:07.123Z")


def test_a_script_s_hash_reads_as_a_dict_and_an_odd_one_is_refused() -> None:
    assert hash_of([b"state", b"verifying", "seq", b"3"]) == {"state": "verifying", "seq": "3"}
    assert hash_of([]) == {}
    with pytest.raises(ValueError, match="shorter"):
        hash_of([b"state", b"verifying", b"seq"])
