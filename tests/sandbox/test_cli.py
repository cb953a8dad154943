"""The `oktopost-connect sandbox` command: usage errors, start-up line, secrets kept out, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sandbox.cli import main
from tests.support.processes import ROOT, busy_port
from tests.support.sandboxes import RunningSandbox


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--rate-limit" in out
    assert "--drop-rate" in out
    assert "--token-ttl" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--port", "x"], "--port"),
        (["--port", "70000"], "--port"),
        (["--token-ttl", "0"], "--token-ttl"),
        (["--rate-limit", "5/fortnight"], "--rate-limit"),
        (["--block-seconds", "-1"], "--block-seconds"),
        (["--error-rate", "2"], "--error-rate"),
        (["--error-rate", "0.7", "--drop-rate", "0.7"], "--"),
        (["--retry-after-format", "rfc"], "--retry-after-format"),
        (["--public-url", "sandbox:8090"], "--public-url"),
        (["--account", "no-key"], "--account"),
        (["--account", ":key"], "--account"),
        (["--account", "demo-account:again"], "--account"),
        (["--account", "a:1", "--account", "a:2"], "--account"),
        (["--daily-limit", "0"], "--daily-limit"),
        (["--retry-after", "soon"], "--retry-after"),
        (["--invalid-rate", "1.5"], "--invalid-rate"),
        (["--error-shape", "xml"], "--error-shape"),
        (["--nonsense"], "--nonsense"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert named in err
    assert "Traceback" not in err


def test_an_account_id_with_a_colon_is_a_config_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OKTOPOST_ACCOUNT_ID", "a:b")
    assert main([]) == 2
    assert "OKTOPOST_ACCOUNT_ID" in capsys.readouterr().err


def test_python_dash_m_sandbox_works() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "sandbox", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 0
    assert "usage: oktopost-connect sandbox" in completed.stdout


@pytest.mark.integration
def test_own_credentials_are_used_and_the_key_never_printed() -> None:
    env = {"OKTOPOST_ACCOUNT_ID": "acct-7", "OKTOPOST_API_KEY": "s3cret-key-value"}
    running = RunningSandbox("--access-log", env=env)
    try:
        with running.client(auth=("acct-7", "s3cret-key-value")) as api:
            token = running.authorize(api)
            assert api.get(f"/v2/social-authorization/{token}").status_code == 200
        with running.client() as default_pair:
            assert default_pair.get("/v2/credential/1").status_code == 401
    finally:
        running.stop()
    output = running.process.log_path.read_text()
    assert f"sandbox listening on http://127.0.0.1:{running.port} (account acct-7)" in output
    assert "s3cret" not in output
    assert token not in output
    assert "/v2/social-authorization/*** 200" in output  # the access log redacts tokens


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_it_cleanly_with_exit_0(signum: signal.Signals) -> None:
    running = RunningSandbox()
    deadline = time.monotonic() + 5
    while not running.process.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)  # the line is printed just after the socket starts listening
    first_line = running.process.log_path.read_text().splitlines()[0]
    assert (
        first_line
        == f"sandbox listening on http://127.0.0.1:{running.port} (account demo-account, key demo-key)"
    )
    # A hanging request and an idle keep-alive connection must not hold the stop up.
    running.set_faults(timeout_rate=1)
    hanging = socket.create_connection(("127.0.0.1", running.port))
    authorization = b"Authorization: Basic ZGVtby1hY2NvdW50OmRlbW8ta2V5\r\n"
    hanging.sendall(b"GET /v2/credential/1 HTTP/1.1\r\nHost: a\r\n" + authorization + b"\r\n")
    idle = socket.create_connection(("127.0.0.1", running.port))
    try:
        os.kill(running.process.popen.pid, signum)
        assert running.process.popen.wait(5) == 0
    finally:
        hanging.close()
        idle.close()
        running.stop()
    assert "sandbox stopped" in running.process.log_path.read_text()


@pytest.mark.integration
def test_a_busy_port_exits_2_with_one_line() -> None:
    with busy_port() as port:
        completed = subprocess.run(
            [sys.executable, "-m", "sandbox", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in completed.stderr


@pytest.mark.integration
def test_fault_flags_at_start_are_the_faults_in_force() -> None:
    running = RunningSandbox(
        "--retry-after", "none", "--invalid-rate", "0.25", "--error-shape", "param", "--throttle-rate", "0.5"
    )
    try:
        faults = running.faults()
    finally:
        running.stop()
    assert faults["retry_after_s"] is None
    assert (faults["invalid_rate"], faults["error_shape"], faults["throttle_rate"]) == (0.25, "param", 0.5)


@pytest.mark.integration
def test_a_whole_retry_after_at_start_is_sent_with_injected_429s() -> None:
    running = RunningSandbox("--retry-after", "9", "--throttle-rate", "1")
    try:
        with running.client() as api:
            assert api.get("/v2/credential/1").headers["retry-after"] == "9"
    finally:
        running.stop()
