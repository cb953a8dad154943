"""What can go wrong when calling Oktopost, as one exception tree. Retry decisions read this tree only.

    OktopostError                   retryable  failure code          when
     +-- TransientError               yes      upstream_unavailable
     |    +-- UpstreamTransportError                                  no answer: timeout, refused, dropped
     |    +-- MalformedAnswerError                                    not JSON, no boolean Result, wrong shape
     |    +-- ThrottledError                                          429 (.retry_after: seconds or None)
     |    +-- ServerError                                             5xx (.status)
     +-- RefusedError                 no
          +-- MismatchedAnswerError            upstream_mismatch     an answer for another network or type
          +-- UnauthorizedError                unauthorized          401, 403 (.status)
          +-- RejectedError                    upstream_rejected     Result false, other 4xx (.messages)
               +-- TokenInvalidError           token_invalid         unknown or expired okt token

Messages are one short line and pass through `redact()`, so no token, API key or Authorization value
reaches a log, an event or a task result through them. The client raises these outside of any
`except` block, so they carry neither `__cause__` nor `__context__`: an httpx exception there would
bring its request, whose URL holds the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from worker.observing.redaction import redact

_MAX_MESSAGE = 500


def _one_line(text: str) -> str:
    line = " ".join(redact(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _restore(cls: type[OktopostError], message: str, state: dict[str, Any]) -> OktopostError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message = message
    error.__dict__.update(state)
    return error


class OktopostError(Exception):
    """Base of every failure of an Oktopost call; never raised itself."""

    retryable: ClassVar[bool] = False
    code: ClassVar[str] = "upstream_rejected"
    attempts: int = 1  # set by the retry policy: how many attempts led to this error

    def __init__(self, message: str) -> None:
        self.message = _one_line(message)
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword attributes; pickling (Celery results, multiprocessing) must not
        # depend on each constructor's signature.
        state = {key: value for key, value in self.__dict__.items() if key != "message"}
        return (_restore, (type(self), self.message, state))


class TransientError(OktopostError):
    """The call may succeed if made again: nothing says Oktopost refused it."""

    retryable = True
    code = "upstream_unavailable"


class UpstreamTransportError(TransientError):
    """No HTTP answer: a timeout, a refused or dropped connection. `.kind` says which ("read timeout")."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        super().__init__(f"Oktopost unreachable: {kind}" + (f" ({detail})" if detail else ""))


class MalformedAnswerError(TransientError):
    """An answer that is not the JSON the API promises; usually a proxy or a half-deployed upstream."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ThrottledError(TransientError):
    """HTTP 429. `.retry_after` is the upstream's wish in seconds, or None when it gave none."""

    def __init__(self, retry_after: float | None = None, *, status: int = 429) -> None:
        self.retry_after = retry_after
        self.status = status
        wait = f", retry after {retry_after:g}s" if retry_after is not None else ""
        super().__init__(f"Oktopost rate limit reached (HTTP {status}{wait})")


class ServerError(TransientError):
    """HTTP 5xx."""

    def __init__(self, status: int, messages: Sequence[str] = ()) -> None:
        self.status = status
        self.messages = list(messages)
        reason = f": {'; '.join(self.messages)}" if self.messages else ""
        super().__init__(f"Oktopost server error (HTTP {status}){reason}")


class RefusedError(OktopostError):
    """Oktopost answered and said no; the same call will get the same answer."""

    retryable = False


class MismatchedAnswerError(RefusedError):
    """Oktopost answered a verify for another network or entity type than the flow's: whatever it
    connected, it is not what the caller asked for, and asking again gets the same answer."""

    code = "upstream_mismatch"


class UnauthorizedError(RefusedError):
    """HTTP 401 or 403: the account id / API key pair is wrong or lacks the partner permission."""

    code = "unauthorized"

    def __init__(self, status: int, messages: Sequence[str] = ()) -> None:
        self.status = status
        self.messages = list(messages)
        what = "has no permission" if status == 403 else "refused the credentials"
        reason = f": {'; '.join(self.messages)}" if self.messages else ""
        super().__init__(f"Oktopost {what} (HTTP {status}){reason}")


class RejectedError(RefusedError):
    """`Result: false` (whatever the status, 200 included) or another 4xx. `.messages` holds its reasons."""

    code = "upstream_rejected"

    def __init__(self, messages: Sequence[str], *, status: int) -> None:
        self.status = status
        self.messages = list(messages) or [f"HTTP {status}"]
        super().__init__(f"Oktopost rejected the call: {'; '.join(self.messages)} (HTTP {status})")


class TokenInvalidError(RejectedError):
    """The okt token is unknown or has expired: the flow cannot go on with it."""

    code = "token_invalid"
