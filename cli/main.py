"""The `oktopost-connect` command: one sub-command per component (cli.commands), plus `up`, `demo`,
`watch` and `webhooks`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from cli import commands
from worker.config.envfile import EnvFileError, read_env_file

USAGE = """usage: oktopost-connect COMMAND [options]

commands:
  up        run shim + worker (+ sandbox, + embedded Redis when needed) in the foreground
  demo      like up on free ports, then drive a profile and a page flow end to end
  shim      the HTTP shim (FastAPI on uvicorn)
  worker    a Celery worker (threads pool)
  sandbox   a local stand-in for Oktopost's social authorization API
  watch     print a flow's events: its history, then live ones until a terminal event
  webhooks  list the webhook endpoints, or replay events to one (for operators)

Run `oktopost-connect COMMAND --help` for a command's options, `oktopost-connect --version` for the
version."""

COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "up": commands.up,
    "demo": commands.demo,
    "sandbox": commands.sandbox,
    "shim": commands.shim,
    "worker": commands.worker,
    "watch": commands.watch,
    "webhooks": commands.webhooks,
}


def version() -> str:
    """The installed distribution's version; the package's own when it runs from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("oktopost-connect")
    except PackageNotFoundError:
        from worker import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"oktopost-connect {version()}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"oktopost-connect: unknown command {args[0]!r} (see oktopost-connect --help)", file=sys.stderr)
        return 2
    try:  # the working directory's .env, for this process and the ones it starts
        read_env_file()
    except EnvFileError as error:
        print(f"oktopost-connect: {error}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
