"""Which hosts and addresses an image URL may reach, so that fetching client URLs is no SSRF hole."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from classifiers.images.allowlist import IPAddress, IPNetwork, allow_entries, ip_allowed, name_allowed
from classifiers.images.config import ImageFetchConfig
from classifiers.images.errors import ImageLoadError, short_url


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in pairs)


# The IANA IPv4 and IPv6 Special-Purpose Address Registries, every block whose "Globally Reachable" is not True
# (RFC 6890 and its updates, checked 2024): ``is_global`` semantics, spelled out here because Python's own tables
# differ by version (3.11 passes 192.0.0.8 and the deprecated site-local fec0::/10). A few tiny anycast blocks the
# registry marks global (192.0.0.9/32, 192.0.0.10/32, 2001:1::1/128 ...) are refused with their parent block: no
# image is served from a TURN or PCP anycast address.
_NOT_GLOBAL_V4 = _nets(
    ("0.0.0.0/32", "an unspecified address"),
    ("0.0.0.0/8", "a reserved ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "a private address (IETF protocol assignments)"),
    ("192.0.2.0/24", "a private address (documentation)"),
    ("192.31.196.0/24", "a private address (AS112)"),
    ("192.52.193.0/24", "a private address (AMT)"),
    ("192.88.99.0/24", "a reserved address (6to4 relay anycast)"),
    ("192.168.0.0/16", "a private address"),
    ("192.175.48.0/24", "a private address (AS112 direct delegation)"),
    ("198.18.0.0/15", "a private address (benchmarking)"),
    ("198.51.100.0/24", "a private address (documentation)"),
    ("203.0.113.0/24", "a private address (documentation)"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "a reserved (broadcast) address"),
    ("240.0.0.0/4", "a reserved address"),
)
_NOT_GLOBAL_V6 = _nets(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a reserved (discard-only) address"),
    ("2001::/23", "a private address (IETF protocol assignments)"),
    ("2001:db8::/32", "a private address (documentation)"),
    ("3fff::/20", "a private address (documentation)"),
    ("5f00::/16", "a reserved (SRv6 SID) address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address (deprecated)"),
    ("ff00::/8", "a multicast address"),
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # every other IPv6 block is reserved by IANA
_NAT64_WKP = ipaddress.ip_network("64:ff9b::/96")


def address_problem(ip: IPAddress) -> str | None:
    """Why a connection to ``ip`` is refused (e.g. ``"a loopback address"``), or None if it is globally reachable.

    IPv6 forms that carry an IPv4 address (6to4, NAT64 ``64:ff9b::/96``) are judged by that address (Teredo,
    ``2001::/32``, is refused with the rest of ``2001::/23``);
    IPv4-mapped ``::ffff:a.b.c.d`` is always refused (no public host publishes one, and a dual-stack socket would
    connect to the IPv4 address behind it)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # drop any %scope
        embedded: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            inner = address_problem(ip.ipv4_mapped)
            return f"an IPv6 address embedding {inner}" if inner else "an IPv4-mapped IPv6 address"
        if ip.sixtofour is not None:
            embedded = ip.sixtofour
        elif ip in _NAT64_WKP:
            embedded = ipaddress.IPv4Address(ip.packed[-4:])
        if embedded is not None:  # the IPv4 address the packets really go to decides
            inner = address_problem(embedded)
            return None if inner is None else f"an IPv6 address embedding {inner}"
        for net, why in _NOT_GLOBAL_V6:
            if ip in net:
                return why
        if ip not in _GLOBAL_UNICAST_V6:
            return "a reserved address"
    else:
        for net, why in _NOT_GLOBAL_V4:
            if ip in net:
                return why
    if not ip.is_global or ip.is_multicast:  # the standard library's view, as a backstop
        return "a non-public address"
    return None


class Resolver:
    """Host lookups for image URLs, in a bounded thread pool of their own, each under a timeout.

    ``getaddrinfo`` blocks its thread and cannot be cancelled. Run in the default executor (which decoding and
    model work share), a slow or hanging resolver would pile up stuck threads there; here it can occupy at most
    ``threads`` threads, further lookups queue, and every lookup gives up after ``timeout_s`` (a queued one that
    never started is dropped from the queue)."""

    def __init__(self, threads: int, timeout_s: float, getaddrinfo: Callable[..., list] = socket.getaddrinfo):
        self.timeout_s = timeout_s
        self._getaddrinfo = getaddrinfo
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-dns")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """All addresses of ``host`` (one lookup; IP literals come back as themselves), in resolver order."""
        loop = asyncio.get_running_loop()
        lookup = functools.partial(self._getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        try:
            infos = await asyncio.wait_for(loop.run_in_executor(self._pool, lookup), self.timeout_s)
        except asyncio.TimeoutError:
            raise ImageLoadError(f"DNS lookup of {host!r} took longer than {self.timeout_s:g}s") from None
        except (socket.gaierror, UnicodeError, OSError):
            raise ImageLoadError(f"could not resolve host {host!r}") from None
        out: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            if ip not in out:
                out.append(ip)
        if not out:
            raise ImageLoadError(f"could not resolve host {host!r}")
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_RESOLVERS: dict[tuple[int, float], Resolver] = {}
_RESOLVERS_LOCK = threading.Lock()


def resolver(config: ImageFetchConfig) -> Resolver:
    """The process's resolver for this config's DNS settings (one thread pool per process, not per request)."""
    key = (config.dns_threads, min(config.dns_timeout_s, config.timeout_s))
    with _RESOLVERS_LOCK:
        found = _RESOLVERS.get(key)
        if found is None:
            found = _RESOLVERS[key] = Resolver(*key)
        return found


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _url_port(url) -> int:
    return url.port or (443 if url.scheme.lower() == "https" else 80)


def check_url(url, config: ImageFetchConfig) -> None:
    """The checks that need nothing but the URL itself (scheme, credentials, an IP literal's range, the port):
    their reasons tell the client nothing it did not send, so they are shown as they are for the client's own URL."""
    scheme = url.scheme.lower()
    if scheme not in config.allowed_schemes:
        raise ImageLoadError(f"URL scheme {scheme!r} is not allowed; allowed: {', '.join(config.allowed_schemes)}")
    if url.userinfo:
        raise ImageLoadError("image URLs with credentials (user:password@) are not accepted")
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise ImageLoadError(f"URL {short_url(str(url))!r} has no host")
    port = _url_port(url)
    entries = allow_entries(config.allow_hosts)
    if name_allowed(entries, host, port):
        return
    port_refused = ImageLoadError(
        f"port {port} is not allowed for image URLs; allowed: {', '.join(map(str, config.allowed_ports))}"
    )
    if _is_ip_literal(host):
        ip = ipaddress.ip_address(host)
        if ip_allowed(entries, ip, port):
            return
        problem = address_problem(ip)
        if problem is not None:
            raise ImageLoadError(f"host {host!r} is {problem}, which image URLs may not reach")
        if port not in config.allowed_ports:
            raise port_refused
    elif port not in config.allowed_ports and not any(e.network is not None and e.port in (None, port) for e in entries):
        raise port_refused  # (with a network entry that may match this port, the resolved address decides)


async def vetted_addresses(url, config: ImageFetchConfig) -> list[IPAddress]:
    """Check the URL (:func:`check_url`), resolve its host and return the addresses it may connect to (non-empty)
    or raise."""
    check_url(url, config)
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    port = _url_port(url)
    entries = allow_entries(config.allow_hosts)
    addresses = await resolver(config).resolve(host, port)
    if name_allowed(entries, host, port):
        return addresses
    allowed, first_problem = [], None
    for ip in addresses:
        if ip_allowed(entries, ip, port):
            problem = None
        elif port not in config.allowed_ports:
            problem = f"port {port} (not an allowed port) of a host that is not allowlisted"
        else:
            problem = address_problem(ip)
        if problem is None:
            allowed.append(ip)
        elif first_problem is None:
            first_problem = problem
    if not allowed:
        verb = "is" if _is_ip_literal(host) else "resolves to"
        raise ImageLoadError(f"host {host!r} {verb} {first_problem}, which image URLs may not reach")
    return allowed
