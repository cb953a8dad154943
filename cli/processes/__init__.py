"""Child processes of the tooling (`up`, `demo`, the bench) and of the integration tests, and the private
redis-servers they run: the one place that starts, watches and stops a process.

Every child runs in a session (so a process group) of its own and dies with its parent, so Ctrl-C reaches
the parent alone and the parent stops every group: SIGTERM, then SIGKILL after a few seconds.
"""

from cli.processes.children import (
    CLI,
    DISCARD,
    STOP_SECONDS,
    Child,
    Children,
    has_exited,
    spawn,
    stop_children,
    stop_groups,
)
from cli.processes.readiness import (
    READY_SECONDS,
    ExitedAtStart,
    NotReady,
    StartupError,
    answers_http,
    free_port,
    port_is_free,
    start_on_free_port,
    wait_for_http,
    wait_for_port,
)
from cli.processes.redis_server import (
    RedisKind,
    RedisService,
    redacted_url,
    redis_server_command,
    start_redis_server,
)

__all__ = [
    "CLI",
    "DISCARD",
    "READY_SECONDS",
    "STOP_SECONDS",
    "Child",
    "Children",
    "ExitedAtStart",
    "NotReady",
    "RedisKind",
    "RedisService",
    "StartupError",
    "answers_http",
    "free_port",
    "has_exited",
    "port_is_free",
    "redacted_url",
    "redis_server_command",
    "spawn",
    "start_on_free_port",
    "start_redis_server",
    "stop_children",
    "stop_groups",
    "wait_for_http",
    "wait_for_port",
]
