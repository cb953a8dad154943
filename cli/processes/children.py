"""A child process in a session (so a process group) of its own, which dies with its parent; stopping
groups SIGTERM first, then SIGKILL; named children with their logs in one directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import IO

STOP_SECONDS = 5.0  # between SIGTERM and SIGKILL; the shim's graceful shutdown takes at most 5 s
CLI = (sys.executable, "-m", "cli")  # `oktopost-connect`, run by the interpreter that runs us
DISCARD = Path(os.devnull)  # a child's log_path when its output is of no use


@cache
def _prctl() -> Callable[..., int] | None:
    """Looked up once in the parent: the child between fork and exec should do as little as it can."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGTERM it when its parent dies, even by SIGKILL."""
    prctl = _prctl()
    if prctl is not None:
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def spawn(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    output: IO[bytes] | int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A child in a new session (so its own process group), which dies with us; stdout and stderr to
    `output` (None: our own). `env` is its whole environment (None: ours)."""
    _prctl()
    return subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
        # the death signal goes with the thread that forks: start children from the main thread
        preexec_fn=_die_with_parent,
    )


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """True once the child has exited, without reaping it, so its pid (the group id) stays ours."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    if process.returncode is not None:
        return  # reaped: the group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_groups(
    processes: Iterable[subprocess.Popen[bytes]],
    timeout: float = STOP_SECONDS,
    hurry: Callable[[], bool] | None = None,
) -> None:
    """SIGTERM every group at once, SIGKILL what is left after `timeout` (or as soon as `hurry()` is true,
    e.g. on a second Ctrl-C), then reap the leaders.

    A leader is reaped only after its group got SIGKILL, so no straggler of the group survives it.
    """
    running = [process for process in processes if process.returncode is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(has_exited(process) for process in running):
        if hurry is not None and hurry():
            break
        time.sleep(0.05)
    for process in running:
        _signal_group(process, signal.SIGKILL)
    for process in running:
        # a process in uninterruptible I/O may outlive SIGKILL for a moment; we do not hang on it
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


class Child:
    """A named child process and its group; its output goes to `log_path` (None: our own terminal,
    DISCARD: nowhere)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab") if log_path is not None else None
        try:
            self.popen = spawn(args, env, self._log, cwd)
        except OSError:
            self.close_log()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return has_exited(self.popen)

    def exit_reason(self) -> str:
        """`NAME exited with code N` or `NAME was killed by SIGNAL`, and where its log is."""
        code = self.popen.poll()
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        where = f" (its log: {self.log_path})" if self.log_path not in (None, DISCARD) else ""
        return f"{self.name} {how}{where}"

    @property
    def output(self) -> str:
        """Everything the child wrote so far ("" without a log file)."""
        if self._log is not None:
            self._log.flush()
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads), from /proc; 0 elsewhere."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        _signal_group(self.popen, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """SIGTERM the group, SIGKILL it after `timeout`; the leader's exit code."""
        stop_children([self], timeout)
        return self.popen.returncode

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()


def stop_children(
    children: Sequence[Child], timeout: float = STOP_SECONDS, hurry: Callable[[], bool] | None = None
) -> None:
    """`stop_groups` for children, all at once, then their logs closed."""
    stop_groups([child.popen for child in children], timeout, hurry)
    for child in children:
        child.close_log()


class Children:
    """Named children with their logs in one directory; `stop_all()` (also on leaving the `with`) ends
    every one still running, newest first."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self._running: list[Child] = []

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """A child with our environment plus `env`, its output in `{log_dir}/{name}.log`."""
        full_env = {**self.env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        return self.adopt(Child(name, args, env=full_env, log_path=self.log_dir / f"{name}.log"))

    def adopt(self, child: Child) -> Child:
        """A child started elsewhere, from now on stopped with the others."""
        self._running.append(child)
        return child

    def start_cli(self, name: str, command: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """`oktopost-connect COMMAND...` as a child."""
        return self.start(name, [*CLI, *command], env)

    def stop(self, children: Sequence[Child], timeout: float = STOP_SECONDS) -> None:
        for child in reversed(children):
            child.stop(timeout)
            if child in self._running:
                self._running.remove(child)

    def stop_all(self) -> None:
        self.stop(list(self._running))

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()
