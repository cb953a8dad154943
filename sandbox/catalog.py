"""What the sandbox's pretend social networks hold: network names, entity types, pages, groups, profiles."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

# Spelled exactly as the reference spells them; Oktopost refuses any other spelling, so the sandbox does too.
NETWORKS = ("Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram")
ENTITY_TYPES = ("profile", "page", "group")
# An Oktopost credential id is this prefix followed by the network's own id of the profile, page or group.
CREDENTIAL_PREFIX = "003-001000000000000-"

_IMAGE_HOSTS = {
    "Twitter": "https://pbs.twimg.com/profile_images",
    "Facebook": "https://graph.facebook.com",
    "LinkedIn": "https://media.licdn.com/dms/image",
    "YouTube": "https://yt3.ggpht.com",
    "Instagram": "https://scontent.cdninstagram.com/v",
}
_PAGE_NAMES = ("Acme Inc", "Acme Products", "Acme Careers", "Acme Support")
_GROUP_NAMES = ("Acme Community", "Acme Partners", "Acme Developers")
_PEOPLE = ("John Doe", "Jane Roe", "Alex Smith", "Maria Garcia", "Wei Chen", "Amara Okafor")


@dataclass(frozen=True, slots=True)
class Entity:
    """A page or group the user could connect, or the user's own profile."""

    id: str
    name: str
    network: str
    image_link: str
    network_username: str
    display_name: str  # the person's or the page's own name, without the network
    is_connected: bool = False


def selectable_entities(network: str, entity_type: str) -> tuple[Entity, ...]:
    """The fixed pages or groups offered for a network; the first is already connected to Oktopost."""
    return _SELECTABLE[(network, entity_type)]


def new_profile(network: str, network_id: str | None = None) -> Entity:
    """A freshly authorized personal profile, with a random network id unless one is given."""
    person = secrets.choice(_PEOPLE)
    if network_id is None:
        network_id = str(10**16 + secrets.randbelow(9 * 10**16))  # 17 digits, like the reference's ids
    username = person.lower().replace(" ", "") + network_id[-4:]
    return Entity(
        id=network_id,
        name=f"{person}'s {network}",
        network=network,
        image_link=f"{_IMAGE_HOSTS[network]}/{network_id}/photo.jpg",
        network_username=username,
        display_name=person,
    )


def _build_selectable() -> dict[tuple[str, str], tuple[Entity, ...]]:
    offered: dict[tuple[str, str], tuple[Entity, ...]] = {}
    for network_index, network in enumerate(NETWORKS, start=1):
        for type_index, (entity_type, names) in enumerate((("page", _PAGE_NAMES), ("group", _GROUP_NAMES))):
            entities = []
            for position, name in enumerate(names):
                # Ids are unique across networks and types, so a credential id names one entity.
                network_id = f"1079542{network_index}{type_index}{position:08d}"
                slug = name.lower().replace(" ", "")
                entities.append(
                    Entity(
                        id=network_id,
                        name=name,
                        network=network,
                        image_link=f"{_IMAGE_HOSTS[network]}/{network_id}/picture",
                        network_username=slug,
                        display_name=name,
                        is_connected=position == 0,
                    )
                )
            offered[(network, entity_type)] = tuple(entities)
    return offered


_SELECTABLE = _build_selectable()
