"""The operator's image-host allowlist (``ImageFetchConfig.allow_hosts``): its entries parsed once and matched against
a URL's host or a resolved address. Shared by the config (which validates entries at startup) and the address
checks (which apply them), so both import it and neither imports the other's module for it."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class AllowEntry:
    host: str | None  # lower-case ASCII hostname
    network: IPNetwork | None
    port: int | None


_ALLOW_FORMS = "hostname, IP, IP network (CIDR), each optionally ':port' (IPv6 with port as '[addr]:port')"


def parse_allow_entry(entry: str) -> AllowEntry:
    """One ``allow_hosts`` entry; raises ValueError naming it and the accepted forms."""

    def bad(why: str) -> ValueError:
        return ValueError(f"allow_hosts entry {entry!r} is not valid ({why}); accepted forms: {_ALLOW_FORMS}")

    if not entry:
        raise bad("empty")
    text, port = entry, None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if m:
        text, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        text, port = text.split(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise bad(f"port {port!r} is not 1-65535")
        port = int(port)
    try:
        return AllowEntry(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        pass
    try:
        host = text.lower().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise bad("not a hostname") from None
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", host) or ".." in host:
        raise bad("not a hostname")
    return AllowEntry(host, None, port)


@lru_cache(maxsize=64)
def allow_entries(allow_hosts: tuple[str, ...]) -> tuple[AllowEntry, ...]:
    return tuple(parse_allow_entry(e) for e in allow_hosts)


def name_allowed(entries: tuple[AllowEntry, ...], host: str, port: int) -> bool:
    return any(e.host == host and e.port in (None, port) for e in entries)


def ip_allowed(entries: tuple[AllowEntry, ...], ip: IPAddress, port: int) -> bool:
    plain = ipaddress.ip_address(ip.packed)
    return any(
        e.network is not None and e.network.version == plain.version and plain in e.network and e.port in (None, port)
        for e in entries
    )
