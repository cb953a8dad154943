"""The Celery and kombu releases whose internals this project relies on, and whether they are installed.

worker/flows/enqueuer.py builds Celery's task messages by hand and worker/queueing/broker.py changes
kombu's Redis transport: both reach below the libraries' public API, so they are used only on the minor
versions the tests cover (pyproject.toml bounds the dependencies to the same range). Outside it the
pipeline keeps to the public API: `apply_async` after each transition, and kombu's transport as it ships.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

Minor = tuple[int, int]

# (lowest minor tested, first minor not tested): the same bounds as the dependencies in pyproject.toml
TESTED_RANGES: dict[str, tuple[Minor, Minor]] = {
    "celery": ((5, 7), (5, 8)),
    "kombu": ((5, 7), (5, 8)),
}
_MINOR = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class LibraryVersions:
    """The versions of Celery and kombu, as their distributions report them ("5.7.0")."""

    celery: str
    kombu: str

    @classmethod
    def installed(cls) -> LibraryVersions:
        return cls(celery=_installed("celery"), kombu=_installed("kombu"))

    def untested(self) -> list[str]:
        """`"celery 5.8.0"` for each library outside its tested range; empty when every one is inside."""
        found = {"celery": self.celery, "kombu": self.kombu}
        return [
            f"{name} {found[name]}"
            for name, (lowest, beyond) in TESTED_RANGES.items()
            if not lowest <= _minor(found[name]) < beyond
        ]

    @property
    def tested(self) -> bool:
        return not self.untested()

    def tested_or_warn(self, log: logging.Logger, instead: str) -> bool:
        """`tested`; when not, one warning line on `log` (the falling-back module's) saying what is done
        `instead`."""
        untested = self.untested()
        if untested:
            log.warning(
                "untested %s (tested: %s): %s", ", ".join(untested), describe_tested_ranges(), instead
            )
        return not untested


def describe_tested_ranges() -> str:
    """`"celery >=5.7,<5.8, kombu >=5.7,<5.8"`, for a warning line."""
    return ", ".join(
        f"{name} >={lowest[0]}.{lowest[1]},<{beyond[0]}.{beyond[1]}"
        for name, (lowest, beyond) in TESTED_RANGES.items()
    )


def _installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _minor(text: str) -> Minor:
    match = _MINOR.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
