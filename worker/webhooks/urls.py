"""Which webhook URLs may be reached: the rules against server-side request forgery.

A URL is https (or http on a loopback host), with no user information and no fragment. Its host is
resolved and every address it resolves to must be a public one: loopback, private, link-local (cloud
metadata among them), unspecified, multicast and reserved addresses are refused, and so is a host that
does not resolve, unless the host name or the address is listed in WEBHOOK_ALLOWED_HOSTS. The check is
made when an endpoint is registered and again before every delivery, and the delivery connects to the
very address checked (`Target`), so a DNS answer that changes in between (rebinding) reaches nothing.

Resolving waits on DNS, which may never answer: each lookup runs in a small pool of its own (never in the
threads that serve requests or flows) and is waited for at most LOOKUP_SECONDS, or the time the caller
has left; a host whose lookup takes longer is refused like one that does not resolve.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.config.settings import is_loopback

# addresses that `is_private`/`is_link_local` already cover, named for the reader: cloud metadata services
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)

Resolver = Callable[[str, int], Sequence[str]]

LOOKUP_SECONDS = 5.0  # the longest wait for DNS when registering an endpoint
# getaddrinfo cannot be cancelled: a lookup that hangs holds one of these threads until the resolver's
# own timeout, and once all are held further lookups are refused in time instead of waiting
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


class RefusedUrl(ValueError):
    """The URL may not be reached; the message says why, in words fit for the caller."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a delivery connects: the checked address, with the URL's host for `Host` and TLS's SNI."""

    url: str  # the URL with the address in place of the host
    host: str
    host_header: str
    address: str
    https: bool


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo)."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


def check_url(url: str) -> None:
    """The URL's shape alone (no resolution); RefusedUrl when it cannot be a webhook URL."""
    _parts(url)


def _parts(url: str) -> tuple[Any, str, int]:
    if len(url) > 2048:
        raise RefusedUrl("the URL is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedUrl("not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise RefusedUrl("the URL must be https")
    host = (parts.hostname or "").lower()
    if not host:
        raise RefusedUrl("the URL has no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise RefusedUrl("user information is not allowed in the URL")
    if parts.fragment or url.endswith("#"):
        raise RefusedUrl("a fragment is not allowed in the URL")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise RefusedUrl("the URL has whitespace or control characters")
    if parts.scheme == "http" and not is_loopback(host):
        raise RefusedUrl("the URL must be https (http only on a loopback host)")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def refusal_of(address: str) -> str | None:
    """Why an address may not be reached, or None when it is a public one."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "an address that is not one"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for kind, refused in (
        ("a loopback", ip.is_loopback),
        ("an unspecified", ip.is_unspecified),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved or not ip.is_global),
    ):
        if refused:
            return f"{kind} address"
    return None


def target_of(
    url: str, allowed_hosts: Sequence[str], resolver: Resolver = resolve, timeout: float = LOOKUP_SECONDS
) -> Target:
    """Where a delivery to `url` connects, once the URL and every address of its host passed the rules;
    RefusedUrl otherwise. The lookup is waited for at most `timeout` seconds."""
    parts, host, port = _parts(url)
    literal = host.strip("[]")
    try:
        addresses = list(_lookup(resolver, literal, port).result(timeout=max(0.0, timeout)))
    except LookupTimeout:
        raise RefusedUrl("the URL's host does not resolve in time") from None
    return _checked(parts, literal, port, addresses, allowed_hosts)


async def checked_target(
    url: str, allowed_hosts: Sequence[str], resolver: Resolver = resolve, timeout: float = LOOKUP_SECONDS
) -> Target:
    """`target_of` for an event loop: the loop waits for the lookup, no thread of its pool does."""
    parts, host, port = _parts(url)
    literal = host.strip("[]")
    try:
        found = await asyncio.wait_for(asyncio.wrap_future(_lookup(resolver, literal, port)), timeout)
    except TimeoutError:
        raise RefusedUrl("the URL's host does not resolve in time") from None
    return _checked(parts, literal, port, list(found), allowed_hosts)


def _lookup(resolver: Resolver, host: str, port: int) -> Future[Sequence[str]]:
    return _LOOKUPS.submit(resolver, host, port)


def _checked(
    parts: Any, literal: str, port: int, addresses: list[str], allowed_hosts: Sequence[str]
) -> Target:
    allowed = {entry.lower().strip("[]") for entry in allowed_hosts}
    if not addresses:
        raise RefusedUrl("the URL's host does not resolve")
    if literal not in allowed:
        for address in addresses:
            if address.split("%")[0] in allowed:
                continue
            reason = refusal_of(address)
            if reason is not None:
                raise RefusedUrl(f"the URL's host resolves to {reason}")
    address = addresses[0]
    shown = f"[{address}]" if ":" in address else address
    netloc = f"{shown}:{port}" if parts.port else shown
    return Target(
        url=parts._replace(netloc=netloc).geturl(),
        host=literal,
        host_header=parts.netloc,  # host[:port] as written: user information is refused above
        address=address,
        https=parts.scheme == "https",
    )
