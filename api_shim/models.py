"""Bodies of the shim's routes; these shape /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from worker.flow import BrowserUI

EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AuthorizationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    network: str = Field(
        max_length=32,
        examples=["LinkedIn"],
        description="Twitter, Facebook, LinkedIn, YouTube or Instagram, any case",
    )
    type: str = Field(default="profile", max_length=16, description="profile, page or group")
    return_url: str | None = Field(
        default=None,
        max_length=2048,
        description="where the browser goes after the callback; its origin must be in ALLOWED_RETURN_URLS",
    )
    reference: str | None = Field(
        default=None, max_length=256, description="your own id for this flow, echoed in every event"
    )
    ui: BrowserUI = Field(
        default=BrowserUI.HOSTED,
        description="hosted: after the callback the browser is led through the shim's own pages "
        "(/connect/{flow_id}); redirect: the callback sends it straight back to return_url",
    )


class AuthorizationCreated(BaseModel):
    flow_id: str
    redirect_url: str
    channel: str
    status_url: str
    expires_at: str


class FlowStatus(BaseModel):
    flow_id: str
    status: str
    network: str
    type: str
    reference: str | None
    events: list[dict[str, Any]]


class SelectionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[EntityId] = Field(min_length=1, max_length=100)


class SelectionAccepted(BaseModel):
    flow_id: str
    status: str
    ids: list[str]
