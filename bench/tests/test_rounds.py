"""`--rounds N`: the systems alternate, and ours / naive-celery is reported per round and as medians
over the rounds. From synthetic rows; no process is started."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import bench
from bench.__main__ import main
from bench.report import Row, ratio_table, ratios, ratios_as_json, table


def row(scenario: str, system: str, number: int = 1, **figures: Any) -> Row:
    made = Row(
        scenario=scenario,
        system=system,
        flows=100,
        completed=100,
        expired=0,
        failed=0,
        lost=0,
        flows_per_second=figures.pop("flows_per_second", 100.0),
        callback_p50_ms=1.0,
        callback_p99_ms=figures.pop("callback_p99_ms", 10.0),
        e2e_p50_ms=figures.pop("e2e_p50_ms", 20.0),
        e2e_p99_ms=40.0,
        upstream_429s=0,
        offered_rate=None,
        callbacks_refused=0,
        repeated_endings=0,
        upstream_calls=100,
        rate_limit_429s=0,
        block_tripped=False,
        seconds=1.0,
        generator_lag_p99_ms=0.0,
        # cpu/fl: the system's processes' CPU seconds over 100 flows
        cpu_seconds=figures.pop("cpu_seconds", {"worker": 0.5}),
        round=number,
    )
    assert not figures, figures
    return made


def three_rounds() -> list[Row]:
    rows = []
    for number, (ours_rate, naive_rate) in enumerate([(80.0, 100.0), (120.0, 100.0), (90.0, 100.0)], 1):
        rows.append(row("throughput", "pipeline", number, flows_per_second=ours_rate, callback_p99_ms=5.0))
        rows.append(row("throughput", "naive-celery", number, flows_per_second=naive_rate))
        rows.append(row("throughput", "inline", number, flows_per_second=1.0))
    return rows


def test_ratios_are_ours_over_naive_per_round_and_their_median() -> None:
    compared = ratios(three_rounds())
    assert list(compared) == ["throughput"]
    rounds = compared["throughput"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["flows_per_second"] for r in rounds] == pytest.approx([0.8, 1.2, 0.9])
    assert [r["callback_p99_ms"] for r in rounds] == pytest.approx([0.5, 0.5, 0.5])
    assert [r["cpu_per_flow_ms"] for r in rounds] == pytest.approx([1.0, 1.0, 1.0])
    median = compared["throughput"]["median"]
    assert median["flows_per_second"] == pytest.approx(0.9)  # the median, not the mean (0.967)
    assert median["e2e_p50_ms"] == pytest.approx(1.0)


def test_a_missing_or_zero_figure_gives_no_ratio_and_the_median_takes_the_other_rounds() -> None:
    rows = [
        row("overhead", "pipeline", 1, flows_per_second=math.nan, cpu_seconds={}),
        row("overhead", "naive-celery", 1, e2e_p50_ms=0.0),
        row("overhead", "pipeline", 2, flows_per_second=50.0),
        row("overhead", "naive-celery", 2, flows_per_second=100.0),
    ]
    compared = ratios(rows)["overhead"]
    first = compared["rounds"][0]
    assert first["flows_per_second"] is None  # NaN: too few completions for a rate
    assert first["e2e_p50_ms"] is None  # 0 in naive's row
    assert first["cpu_per_flow_ms"] is None  # no CPU measured
    assert compared["median"]["flows_per_second"] == pytest.approx(0.5)
    printed = ratio_table(ratios(rows))
    line = next(text for text in printed.splitlines() if text.split()[:2] == ["overhead", "1"])
    assert line.split()[2:] == ["-", "1.00", "-", "-"]
    assert "higher" not in line
    assert ratios_as_json(ratios(rows))["overhead"]["rounds"][0]["flows_per_second"] is None


def test_the_ratio_section_needs_both_systems_and_shows_a_median_only_over_rounds() -> None:
    assert ratios([row("burst", "pipeline"), row("burst", "inline")]) == {}
    one = ratio_table(ratios([row("burst", "pipeline"), row("burst", "naive-celery", flows_per_second=50.0)]))
    _, _, columns, *lines = one.splitlines()
    assert "(flows/s:\nabove 1 is ours better; cb p99, e2e p50, cpu/fl: below 1 is ours better)" in one
    assert "median" not in one
    assert columns.split() == ["scenario", "round", "flows/s", "cb", "p99", "e2e", "p50", "cpu/fl"]
    assert [line.split()[:3] for line in lines] == [["burst", "1", "2.00"]]  # one run: no median line
    many = ratio_table(ratios(three_rounds())).splitlines()
    assert "the median over the rounds" in many[0]
    assert [line.split()[:3] for line in many[3:]] == [
        ["throughput", "1", "0.80"],
        ["throughput", "2", "1.20"],
        ["throughput", "3", "0.90"],
        ["throughput", "median", "0.90"],
    ]


def test_the_table_shows_the_round_only_when_asked() -> None:
    rows = [row("overhead", "pipeline"), row("overhead", "naive-celery")]
    once = table(rows)
    assert "round" not in once
    assert once.splitlines()[0].startswith("scenario      system        flows   done")
    assert once == table(rows, rounds=False)
    rounds = table([*rows, row("overhead", "pipeline", 2)], rounds=True).splitlines()
    assert rounds[0].startswith("scenario      system        round  flows   done")
    assert rounds[-1].startswith("overhead      pipeline          2    100    100")


def test_the_systems_alternate_their_order_round_by_round() -> None:
    names = ["pipeline", "inline", "naive-celery"]
    assert bench.round_order(names, 1) == names
    assert bench.round_order(names, 2) == ["naive-celery", "inline", "pipeline"]
    assert bench.round_order(names, 3) == names
    assert names == ["pipeline", "inline", "naive-celery"]  # not reversed in place
    rows = [row("throughput", system, number) for number in (2, 1) for system in reversed(names)]
    rows.append(row("overhead", "naive-celery", 2))
    rows.sort(key=bench._row_order)
    assert [(r.scenario, r.system, r.round) for r in rows] == [
        ("overhead", "naive-celery", 2),
        ("throughput", "pipeline", 1),
        ("throughput", "pipeline", 2),
        ("throughput", "inline", 1),
        ("throughput", "inline", 2),
        ("throughput", "naive-celery", 1),
        ("throughput", "naive-celery", 2),
    ]


def test_databases_are_reused_only_after_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[str] = []
    monkeypatch.setattr(bench, "_flush", flushed.append)
    databases = bench.Databases("redis://127.0.0.1:7000/0", ours=True)
    handed = [databases.next() for _ in range(bench.Databases.COUNT)]
    assert handed[0] == "redis://127.0.0.1:7000/1"
    assert handed[-1] == "redis://127.0.0.1:7000/63"
    assert len(set(handed)) == len(handed)
    assert flushed == []
    assert databases.next() == "redis://127.0.0.1:7000/1"  # the 64th run: database 1 again, emptied
    assert flushed == ["redis://127.0.0.1:7000/1"]
    # REDIS_URL (not the bench's own redis-server): used as it is, never flushed
    theirs = bench.Databases("redis://elsewhere:6379/5", ours=False)
    assert {theirs.next() for _ in range(100)} == {"redis://elsewhere:6379/5"}
    assert flushed == ["redis://127.0.0.1:7000/1"]


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_rounds_below_one_are_refused(rounds: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", rounds]) == 2
    assert capsys.readouterr().err.strip() == "python -m bench: --rounds must be at least 1"


def test_the_json_records_the_rounds_each_rows_round_and_the_ratios(tmp_path: Path) -> None:
    options = bench.BenchOptions(rounds=3, json_path=tmp_path / "bench.json")
    document = bench._document(options, [], three_rounds(), None, (0.0, 0.0, 0.0))
    assert document["options"]["rounds"] == 3
    assert [r["round"] for r in document["rows"]] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    compared = document["ratios"]["throughput"]
    assert [r["flows_per_second"] for r in compared["rounds"]] == [0.8, 1.2, 0.9]
    assert compared["median"]["flows_per_second"] == 0.9


def test_a_sandbox_group_runs_every_system_once_a_round_each_on_a_database_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_measure_group with the systems' runs faked: the order alternates, every run gets the next
    database, and each row is numbered with its round."""
    runs: list[tuple[str, str]] = []

    def fake_system(name: str) -> Any:
        return lambda _children, setup: (name, setup.redis_url)

    def fake_run(system: tuple[str, str], *_: Any) -> list[Row]:
        runs.append(system)
        return [row("overhead", system[0])]

    names = ("pipeline", "inline", "naive-celery")
    monkeypatch.setattr(bench, "SYSTEMS", {name: fake_system(name) for name in names})
    monkeypatch.setattr(bench, "_run_system", fake_run)
    sandbox = type("Sandbox", (), {"upstream": type("Upstream", (), {"rate_limit": None})()})()
    databases = bench.Databases("redis://127.0.0.1:7000/0", ours=True)
    options = bench.BenchOptions(rounds=3, systems=("pipeline", "naive-celery"))
    group = [type("Scenario", (), {"name": "overhead"})()]
    rows = bench._measure_group(options, group, sandbox, None, databases, (), [])  # type: ignore[arg-type]
    assert runs == [
        ("pipeline", "redis://127.0.0.1:7000/1"),
        ("naive-celery", "redis://127.0.0.1:7000/2"),
        ("naive-celery", "redis://127.0.0.1:7000/3"),
        ("pipeline", "redis://127.0.0.1:7000/4"),
        ("pipeline", "redis://127.0.0.1:7000/5"),
        ("naive-celery", "redis://127.0.0.1:7000/6"),
    ]
    assert [(r.system, r.round) for r in rows] == [
        ("pipeline", 1),
        ("naive-celery", 1),
        ("naive-celery", 2),
        ("pipeline", 2),
        ("pipeline", 3),
        ("naive-celery", 3),
    ]
