"""Oktopost's vocabulary: the networks and entity types it knows, and the paths of its API."""

from __future__ import annotations

NETWORKS = ("Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram")
ENTITY_TYPES = ("profile", "page", "group")

# Oktopost's own SDK spells YouTube both ways; lower-casing makes both (and any other casing) match.
_NETWORK_BY_LOWER = {network.lower(): network for network in NETWORKS}

AUTHORIZATION_PATH = "/v2/social-authorization"
CREDENTIAL_PATH = "/v2/credential"


def canonical_network(name: str) -> str:
    """Case-insensitive: `linkedin` -> LinkedIn, `Youtube` -> YouTube; ValueError for any other network."""
    canonical = _NETWORK_BY_LOWER.get(name.strip().lower()) if isinstance(name, str) else None
    if canonical is None:
        raise ValueError(f"unsupported network {name!r}; expected one of {', '.join(NETWORKS)}")
    return canonical


def canonical_entity_type(name: str) -> str:
    """Case-insensitive: `Page` -> page; ValueError for anything but profile, page or group."""
    canonical = name.strip().lower() if isinstance(name, str) else ""
    if canonical not in ENTITY_TYPES:
        raise ValueError(f"unsupported type {name!r}; expected one of {', '.join(ENTITY_TYPES)}")
    return canonical
