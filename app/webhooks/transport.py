"""Outbound webhook HTTP: the target is resolved and checked once, and the connection goes to the address that was
checked (a DNS answer that changes between check and connect cannot redirect it); one deadline per delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.errors import Unprocessable
from app.settings import get_settings


class DeliveryFailed(Exception):
    """A delivery attempt that got no HTTP status (refused target, connection error, deadline passed)."""


@dataclass(frozen=True)
class Target:
    url: str  # the URL with its host replaced by the checked address
    host: str  # the name the receiver expects (Host header, TLS server name)


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # local-use translation: never a public target


def public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Only globally routable unicast: refuses private, loopback, link-local, CGNAT (100.64/10), reserved, ...,
    and IPv6 forms that carry a non-public IPv4 address (mapped, NAT64, 6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in LOCAL_NAT64:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None and not public(embedded):
            return False
    return ip.is_global and not ip.is_multicast


def resolve(url: str) -> Target:
    """Check an http(s) URL and pin it to one checked address; 422 without naming any resolved address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unprocessable(f"callback URL must be http(s) with a host: {url!r}")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Unprocessable(f"callback URL has an invalid port: {url!r}") from exc
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unprocessable(f"callback host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise Unprocessable(f"callback host {host!r} does not resolve")
    if not get_settings().webhooks_allow_private and not all(public(ip) for ip in addresses):
        raise Unprocessable(f"callback URL {url!r} points at a non-public address")
    ip = addresses[0]
    netloc = (f"[{ip}]" if ip.version == 6 else str(ip)) + f":{port}"
    return Target(url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
                  host=host if parts.port is None else f"{host}:{parts.port}")


def post(url: str, *, content: bytes, headers: dict[str, str], deadline: float) -> int:
    """POST to the checked address; the status code. The whole exchange (connect, send, the response's status
    line and headers) must finish within `deadline` seconds: a receiver trickling bytes cannot hold it longer."""
    target = resolve(url)
    server_name = urlsplit(url).hostname or ""

    async def exchange() -> int:
        async with httpx.AsyncClient(timeout=deadline, follow_redirects=False, trust_env=False) as client:
            async with client.stream("POST", target.url, content=content, headers=headers | {"Host": target.host},
                                     extensions={"sni_hostname": server_name}) as response:
                return response.status_code  # the body is never read

    try:
        return asyncio.run(asyncio.wait_for(exchange(), deadline))
    except TimeoutError as exc:
        raise DeliveryFailed(f"no answer within the {deadline:g} s deadline (LETHE_WEBHOOK_DEADLINE)") from exc
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: the receiver could not be reached") from exc
