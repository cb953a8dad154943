"""Oktopost's refusals, `{"Result": false, "Errors": ...}`, in each shape Oktopost is known to send.

`Errors` comes as an object keyed by kind (`{"API": {"Error": "..."}}` for a refusal of the call,
`{"Param": {"network": "..."}}` for bad parameters), as a `Param` object keyed by where the parameter was
looked for (`{"Param": {"get": "Missing value for parameter x"}}`), or as an empty list. A client must
read every one; the `error_shape` fault picks which one the sandbox sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sandbox.httpserver import Response, json_response

ERROR_SHAPES = ("object", "list", "param")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal before it is shaped: the status, what went wrong, and any headers it must carry."""

    status: int
    message: str
    params: Mapping[str, str] = field(default_factory=dict)  # bad parameter -> message, for a 400
    headers: tuple[tuple[str, str], ...] = ()

    def response(self, shape: str = "object") -> Response:
        return json_response(self.status, {"Result": False, "Errors": self.errors(shape)}, list(self.headers))

    def errors(self, shape: str) -> object:
        if shape == "list":
            return []
        if shape == "param":
            # One key per place a parameter is read from; the query string's ("get") stands for all.
            return {"Param": {"get": "; ".join(self.params.values()) or self.message}}
        if self.params:
            return {"Param": dict(self.params)}
        return {"API": {"Error": self.message}}


def param_refusal(params: Mapping[str, str]) -> Refusal:
    """400 naming every bad or missing parameter."""
    return Refusal(400, "; ".join(params.values()), dict(params))
