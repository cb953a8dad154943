"""The connections scenario's verdict and report, from figures (the runs themselves are in the bench)."""

from __future__ import annotations

from bench.connections import ConnectionsLoad, ConnectionsResult, Run


def result(without: int, beside: int, check_calls: int, throttled: int = 0) -> ConnectionsResult:
    load = ConnectionsLoad(connections=1000, burst=100, token_ttl=8)
    return ConnectionsResult(
        load,
        Run(checks=False, completed=without, seconds=9.0, throttled=throttled),
        Run(
            checks=True,
            completed=beside,
            seconds=9.0,
            check_calls=check_calls,
            checks_ok=2,
            check_mean_ms=1.0,
        ),
    )


def test_the_target_needs_both_runs_at_the_optimum_checks_within_their_share_and_no_429() -> None:
    assert result(78, 77, check_calls=2).met
    assert not result(78, 60, check_calls=2).met  # the checks cost the burst flows
    assert not result(78, 78, check_calls=11).met  # 0.1 x 10/s x 9 s = 9, and one more at most
    assert not result(78, 78, check_calls=2, throttled=1).met


def test_the_report_shows_both_runs_and_the_verdict() -> None:
    report = result(78, 77, check_calls=2).report()
    assert "without checks" in report
    assert "beside checks" in report
    assert report.rstrip().endswith("met")
    assert "NOT met" in result(10, 10, check_calls=0).report()
