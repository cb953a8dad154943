"""Scrubbing secrets out of text and log records: okt tokens, Authorization values, webhook secrets,
registered secrets.

httpx logs every request URL at INFO and the okt token is a segment of that URL, so the filter sits on
the httpx/httpcore loggers (`install_log_redaction()`) and on every handler the logging setup builds.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import quote

MASK = "***"

# `okt=` in a query string or a form body, up to the next separator.
_OKT_PARAMETER = re.compile(r"(?i)(\bokt=)[^&\s\"'#<>]+")
# The token is the path segment right after /social-authorization/ (verify and complete).
_TOKEN_SEGMENT = re.compile(r"(?i)(/social-authorization/)[^/?#\s\"'<>]+")
# Header-looking text: `Authorization: Basic xyz`, `'authorization': 'Bearer xyz'`,
# `(b'Authorization', b'Basic xyz')`.
_AUTHORIZATION = re.compile(
    r"(?i)(\bauthorization\b['\"]?\s*[:=,]\s*b?['\"]?\s*(?:basic|bearer)\s+)[^\s'\",;)]+"
)
# A Standard Webhooks secret (`whsec_` and base64), whatever endpoint it is of.
_WEBHOOK_SECRET = re.compile(r"(whsec_)[A-Za-z0-9+/=]+")
# httpcore's DEBUG line of an answer's headers: the status is kept, the headers are not (a Location or a
# Set-Cookie of the upstream, or of a proxy before it, may carry a token no pattern above knows).
_RESPONSE_HEADERS = re.compile(
    r"(receive_response_headers\.complete return_value=\([^\[]*)\[.*\]\)", re.DOTALL
)

# Shorter values would blank out ordinary words; no real key or token is that short.
_MIN_SECRET_LENGTH = 4

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Redact this exact value, and its URL-quoted form, wherever it appears from now on."""
    global _secret_pattern
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe="")}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(secret) for secret in ordered))


def register_basic_credentials(account_id: str, api_key: str) -> None:
    """The API key, and the base64 `account:key` pair an Authorization: Basic header carries."""
    register_secret(api_key)
    register_secret(base64.b64encode(f"{account_id}:{api_key}".encode()).decode("ascii"))


def redact(text: str) -> str:
    """`text` with every okt token, Authorization value and registered secret replaced by `***`."""
    if not text:
        return text
    text = _OKT_PARAMETER.sub(rf"\g<1>{MASK}", text)
    text = _TOKEN_SEGMENT.sub(rf"\g<1>{MASK}", text)
    text = _AUTHORIZATION.sub(rf"\g<1>{MASK}", text)
    text = _WEBHOOK_SECRET.sub(rf"\g<1>{MASK}", text)
    text = _RESPONSE_HEADERS.sub(rf"\g<1>[{MASK}])", text)
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Renders a record's message with its args, redacts it, and keeps the result: never drops a record.

    Rendering once here (instead of redacting each arg) also catches a secret that only appears once
    the args are formatted, such as an httpx.URL whose str() holds the token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for the handler to report
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set, so the traceback is printed redacted.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# httpcore logs on per-module children; a logger's filters see only records logged on that very
# logger, not those propagated from children, so each one gets the filter.
REDACTED_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)

_FILTER = RedactingFilter()


def redacting_filter() -> RedactingFilter:
    """The shared filter, for handlers the logging setup builds."""
    return _FILTER


def install_log_redaction() -> None:
    """Attach the filter to the httpx and httpcore loggers; idempotent."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
            logger.addFilter(_FILTER)
