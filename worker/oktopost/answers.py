"""Oktopost's answers as the reference shapes them; unknown fields are ignored, so an upstream addition
breaks nothing."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    # Upstream names are validation aliases, so code builds and reads these by their snake_case names
    # (and type checkers see those in __init__), while answers validate by Oktopost's spelling.
    # Ids arrive as strings in the reference, but a JSON number must not fail a flow.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True, coerce_numbers_to_str=True)


class Credential(Answer):
    """A connected profile, page or group. The PUT answer carries only id, name, status and network."""

    id: str = Field(validation_alias="Id", min_length=1)
    name: str = Field(validation_alias="Name")
    status: str = Field(validation_alias="Status")  # valid or invalid, passed on as given
    network: str = Field(validation_alias="Network")
    display_name: str | None = Field(default=None, validation_alias="DisplayName")
    created: str | None = Field(default=None, validation_alias="Created")
    image_link: str | None = Field(default=None, validation_alias="ImageLink")
    network_username: str | None = Field(default=None, validation_alias="NetworkUsername")


class Entity(Answer):
    """A page or group the user may choose to connect."""

    id: str = Field(validation_alias="Id", min_length=1)
    name: str = Field(validation_alias="Name")
    network: str = Field(validation_alias="Network")
    image_link: str | None = Field(default=None, validation_alias="ImageLink")
    network_username: str | None = Field(default=None, validation_alias="NetworkUsername")
    is_connected: bool = Field(default=False, validation_alias="IsConnected")


class VerifiedProfile(Answer):
    """Verify's answer for a profile: it is connected already."""

    credential: Credential = Field(validation_alias="Credential")


class EntityChoice(Answer):
    """Verify's answer for pages and groups: the user must pick, then `complete(token, ids)`."""

    token: str = Field(min_length=1, repr=False)
    entities: list[Entity] = Field(validation_alias="data")


class StartAnswer(Answer):
    redirect_url: str = Field(validation_alias="RedirectUrl", min_length=1)


class CredentialAnswer(Answer):
    credential: Credential = Field(validation_alias="Credential")


class CompleteAnswer(Answer):
    credentials: list[Credential] = Field(validation_alias="Credentials")


class CredentialPage(Answer):
    """One page of `GET /v2/credential`: `items` of at most the page size, `total` across all pages."""

    items: list[Credential] = Field(validation_alias="Items")
    total: int = Field(validation_alias="Total", ge=0)
