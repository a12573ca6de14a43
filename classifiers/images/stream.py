"""Images from request strings: decoding with bounded memory, and fetching URLs without opening an SSRF hole.

An image input is a string in one of three forms:

* an ``http://`` / ``https://`` URL (schemes configurable, see :class:`ImageFetchConfig`),
* a ``data:image/<type>;base64,<payload>`` URI,
* raw base64 of the image file (whitespace and missing ``=`` padding tolerated, URL-safe alphabet too).

Fetching a URL a client sent is a security boundary (server-side request forgery). The rules, checked for
the first URL *and again for every redirect hop* (redirects are followed here, one hop at a time, never by
the HTTP library):

1. the scheme must be in ``allowed_schemes`` (http/https); ``file:``, ``ftp:``, ``gopher:`` ... are refused,
   and so are URLs carrying credentials (``user:pass@``);
2. the port must be in ``allowed_ports`` (80, 443) unless an ``allow_hosts`` entry matches host and port;
3. the host is resolved once, in the fetcher's own bounded DNS thread pool under ``dns_timeout_s`` (never in the
   default executor that decoding and model work use); every resolved address must be globally reachable
   (``is_global`` semantics, from IANA's special-purpose registries: :func:`address_problem`) unless the operator
   allowlisted it (:attr:`ImageFetchConfig.allow_hosts`). Refused: loopback, private (RFC 1918, ULA), link-local
   (incl. the 169.254.169.254 cloud metadata service), site-local ``fec0::/10``, multicast, reserved,
   unspecified, shared/CGNAT 100.64.0.0/10, IETF protocol assignments (``192.0.0.0/24``, ``2001::/23``),
   documentation and benchmarking ranges, everything outside IPv6 global unicast ``2000::/3``, every IPv4-mapped
   ``::ffff:a.b.c.d``, and 6to4 ``2002::/16`` or NAT64 ``64:ff9b::/96`` forms of a refused IPv4 address. Only
   addresses that pass are used;
4. the connection goes to the vetted address itself (the URL's host is replaced by the IP; ``Host`` and, for
   https, the TLS SNI name and certificate check keep the original name), so a second DNS answer cannot
   rebind the request to another address;
5. environment proxies are ignored, one total deadline (``timeout_s``) covers DNS, redirects and the body;
6. the body is streamed and abandoned as soon as it exceeds ``max_bytes`` (a larger ``Content-Length`` is
   refused before reading); compressed transfer encodings are decompressed with the same cap;
7. what went wrong on the network (DNS, address, connect, TLS, HTTP status, redirects, body) is logged, and the
   client is told only ``input[N]: could not fetch image N`` (:class:`FetchFailed`): otherwise the service would
   be a port scanner. What is wrong with the URL itself (scheme, credentials, port, an IP literal's range) is
   told as it is.

Decoding (:func:`probe_image`, :func:`decode_image`): the bytes must decode as one of ``allowed_formats`` (format
plugins such as EPS, which would run Ghostscript, are never consulted); the pixel count from the header is checked
against ``max_pixels`` before any pixel is decoded (PIL's own decompression-bomb guard stays on as a backstop) and
``verify()`` must pass; then the image is decoded (a JPEG directly at reduced scale) and downscaled at once to a
shorter side of at most twice the model's input size (:func:`downscaled_size`), the EXIF orientation applied and
the result converted to RGB (transparency composited on white).

Memory (:func:`embed_images`): a request's images are loaded concurrently (fetches bounded per process by
``max_concurrency``), identical file bytes are decoded once (keyed by SHA-256), full-resolution decodes are
budgeted per process (``max_decoding_pixels``), and decoded images are handed to the model in chunks under a
per-request and a per-process pixel budget (``max_request_pixels``, ``max_replica_pixels``), so the image memory
of a replica is bounded by its config (docs/images.md, Memory). Base64 and data-URI images get the same byte cap,
format and pixel checks. A bad image raises :class:`~classifiers.protocol.errors.InvalidImage` naming the request position
of the first bad image. No Ray imports.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import weakref
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Any, Awaitable, Callable, Collection, Union
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from classifiers.catalog.registry import ModelSpec
from classifiers.protocol.errors import InvalidImage

logger = logging.getLogger("ray.serve")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

SUPPORTED_SCHEMES = ("http", "https")
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REASON_URL = 120  # characters of a URL echoed back in an error message


def _pil_formats() -> set[str]:
    from PIL import Image

    Image.init()
    return set(Image.OPEN)


class ImageFetchConfig(BaseModel):
    """How image inputs are fetched and decoded (one per embedder deployment of a multimodal model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_schemes: tuple[str, ...] = Field(
        default=SUPPORTED_SCHEMES,
        description="URL schemes that may be fetched; a subset of http, https. `data:` URIs and raw base64 are "
        "always accepted (they need no fetching).",
    )
    allow_hosts: tuple[str, ...] = Field(
        default=(),
        description="Operator allowlist exempt from the public-address check: hostnames (`images.internal`), IP "
        "addresses (`10.1.2.3`, `::1`), or networks (`10.0.0.0/8`), each optionally with a port "
        "(`minio.internal:9000`, `127.0.0.1:8080`, `[::1]:8080`). A hostname matches the URL's host; an IP or "
        "network matches the resolved address. The connection is still pinned to the resolved address.",
    )
    max_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest image file accepted, in bytes (Jina: 8 MB); applies to "
        "downloads, data URIs and base64 alike."
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Total time for fetching one URL: DNS, connects, every redirect and "
        "the whole body."
    )
    max_pixels: int = Field(
        default=40_000_000, gt=0, le=178_956_970,
        description="Largest width*height accepted, checked from the image header before any pixel is decoded "
        "(decompression bombs); at most 2x PIL's own bomb limit. Larger images are refused, smaller ones are "
        "decoded and downscaled at once (`max_short_side`).",
    )
    max_short_side: int | None = Field(
        default=None, ge=16, le=8192,
        description="Decoded images are downscaled right after decoding, aspect ratio kept, so that the shorter side "
        "is at most this many pixels and the longer side at most 4x this (extreme panoramas shrink further). None: "
        "twice the model's input size, which the ImageEmbedder reads from the loaded model (448 for the 224-pixel "
        "CLIPs, 1024 for jina-clip-v2), and 448 where no model is known. CLIP-style models resize the shorter side to "
        "their input size anyway, so more pixels only cost memory. JPEGs are decoded at reduced size directly (no "
        "full-size copy is ever made).",
    )
    max_request_pixels: int = Field(
        default=16_000_000, ge=1,
        description="Decoded (downscaled) pixels one request may hold at a time, identical images counted once: a "
        "request with more streams its images to the model in chunks under this budget instead of holding them all. "
        "Pillow keeps RGB as 4 bytes per pixel, so 64 MB by default.",
    )
    max_replica_pixels: int = Field(
        default=64_000_000, ge=1,
        description="Decoded (downscaled) pixels all requests of one replica process may hold at a time; loads wait "
        "for room (first come, first served). 4 bytes per pixel: 256 MB by default. With `max_decoding_pixels` it "
        "bounds the image memory of an ImageEmbedder replica (docs/images.md, Memory).",
    )
    max_decoding_pixels: int = Field(
        default=40_000_000, ge=1,
        description="Full-resolution pixels being decoded at once per replica process, before downscaling (a PNG "
        "must be decoded whole; a JPEG only at its reduced size). 4 bytes per pixel (the decoded image is the only "
        "full-size buffer: it is reduced strip by strip), so 160 MB by default. One image larger than this still "
        "decodes, alone.",
    )
    max_redirects: int = Field(default=3, ge=0, le=20, description="Redirect hops followed per URL; each is re-checked.")
    max_concurrency: int = Field(
        default=8, ge=1, le=256,
        description="Images fetched and decoded at the same time per replica process (so at most this many file "
        "bodies of up to `max_bytes` are held at once).",
    )
    max_fetches_per_request: int = Field(
        default=4, ge=1, le=256,
        description="Of those, at most this many for one request: 1024 slow URLs in one request take 4 of the "
        "replica's fetch slots, never all of them, so other clients' images keep being fetched.",
    )
    allowed_ports: tuple[int, ...] = Field(
        default=(80, 443),
        description="Ports image URLs (and every redirect hop) may use. Other ports are refused unless an "
        "`allow_hosts` entry matches the host (and its port, if the entry names one), so the fetcher cannot be used "
        "to probe other services of public hosts.",
    )
    dns_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="Longest wait for one DNS lookup (also bounded by `timeout_s`); the lookup's thread is abandoned "
        "after it, the URL is refused.",
    )
    dns_threads: int = Field(
        default=4, ge=1, le=64,
        description="Threads of the image fetcher's own DNS pool per replica process. Lookups never run in the "
        "default thread pool that decoding and model work use, so a slow resolver can stall at most these threads; "
        "further lookups queue and time out.",
    )
    user_agent: str = Field(
        default="ray-classifier-image-fetcher/0.1", min_length=1, description="User-Agent header sent with fetches."
    )
    allowed_formats: tuple[str, ...] = Field(
        default=DEFAULT_FORMATS,
        description="PIL image formats accepted (upper case, e.g. JPEG, PNG, WEBP, GIF, BMP, TIFF). Formats that call "
        "external programs (EPS) should never be added.",
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of CA certificates trusted for https fetches instead of the default "
        "bundle (for an internal image store with a private CA)."
    )

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _schemes(cls, v: Any) -> tuple[str, ...]:
        items = _as_tuple(v, "allowed_schemes")
        out = tuple(str(s).lower().strip() for s in items)
        bad = [s for s in out if s not in SUPPORTED_SCHEMES]
        if bad:
            raise ValueError(f"allowed_schemes {bad} not supported; allowed: {list(SUPPORTED_SCHEMES)}")
        if not out:
            raise ValueError(f"allowed_schemes is empty; allowed values: {list(SUPPORTED_SCHEMES)}")
        return out

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> tuple[int, ...]:
        items = _as_tuple(v, "allowed_ports")
        out = []
        for p in items:
            if isinstance(p, bool) or not str(p).strip().isdigit() or not 0 < int(p) < 65536:
                raise ValueError(f"allowed_ports entry {p!r} is not a port number 1-65535")
            out.append(int(p))
        if not out:
            raise ValueError("allowed_ports is empty; give at least one port (default: 80, 443)")
        return tuple(dict.fromkeys(out))

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> tuple[str, ...]:
        items = tuple(str(s).strip() for s in _as_tuple(v, "allow_hosts"))
        for entry in items:
            _parse_allow_entry(entry)  # raises naming the entry and the accepted forms
        return items

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _formats(cls, v: Any) -> tuple[str, ...]:
        out = tuple(str(s).upper().strip() for s in _as_tuple(v, "allowed_formats"))
        known = _pil_formats()
        bad = [f for f in out if f not in known]
        if bad:
            raise ValueError(f"allowed_formats {bad} are not image formats this Pillow reads; known: {sorted(known)}")
        if "EPS" in out:
            raise ValueError("allowed_formats must not contain 'EPS': decoding it runs Ghostscript on client bytes")
        if not out:
            raise ValueError(f"allowed_formats is empty; pick from {sorted(known)}")
        return out


def _as_tuple(v: Any, name: str) -> tuple:
    if isinstance(v, str):
        return tuple(p for p in (s.strip() for s in v.split(",")) if p)  # env-var friendly "a,b"
    if isinstance(v, (list, tuple, set, frozenset)):
        return tuple(v)
    raise ValueError(f"{name} must be a list of strings, got {v!r}")


# ----------------------------------------------------------------------------------------------------------------
# Address checks
# ----------------------------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class _AllowEntry:
    host: str | None  # lower-case ASCII hostname
    network: IPNetwork | None
    port: int | None


_ALLOW_FORMS = "hostname, IP, IP network (CIDR), each optionally ':port' (IPv6 with port as '[addr]:port')"


def _parse_allow_entry(entry: str) -> _AllowEntry:
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
        return _AllowEntry(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        pass
    try:
        host = text.lower().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise bad("not a hostname") from None
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", host) or ".." in host:
        raise bad("not a hostname")
    return _AllowEntry(host, None, port)


@lru_cache(maxsize=64)
def _allow_entries(allow_hosts: tuple[str, ...]) -> tuple[_AllowEntry, ...]:
    return tuple(_parse_allow_entry(e) for e in allow_hosts)


def _name_allowed(entries: tuple[_AllowEntry, ...], host: str, port: int) -> bool:
    return any(e.host == host and e.port in (None, port) for e in entries)


def _ip_allowed(entries: tuple[_AllowEntry, ...], ip: IPAddress, port: int) -> bool:
    plain = ipaddress.ip_address(ip.packed)
    return any(
        e.network is not None and e.network.version == plain.version and plain in e.network and e.port in (None, port)
        for e in entries
    )


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------


class ImageLoadError(Exception):
    """One image could not be used; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FetchFailed(ImageLoadError):
    """A URL could not be fetched. The client is told only "could not fetch image N": whether DNS, the address
    check, the connection, TLS, the HTTP status or the body failed would let a client map hosts and ports through
    the service. ``reason`` (the real one) goes to the server log."""


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")  # base64 never contains ':', so any match is a scheme
_WS = re.compile(r"\s+")


def decode_base64(payload: str, max_bytes: int, what: str = "base64") -> bytes:
    """Decode standard or URL-safe base64 (whitespace and missing padding tolerated), capped at ``max_bytes``."""
    s = _WS.sub("", payload)
    if not s:
        raise ImageLoadError(f"{what} image is empty")
    if len(s) > (max_bytes + 2) // 3 * 4 + 4:
        raise ImageLoadError(f"{what} image is larger than the limit of {max_bytes} bytes")
    s += "=" * (-len(s) % 4)
    try:
        if "-" in s or "_" in s:
            data = base64.b64decode(s, altchars=b"-_", validate=True)
        else:
            data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError(f"malformed {what}: not valid base64 (and not an http(s) URL or data: URI)") from None
    if len(data) > max_bytes:
        raise ImageLoadError(f"{what} image is larger than the limit of {max_bytes} bytes")
    return data


def decode_data_uri(value: str, max_bytes: int) -> bytes:
    header, comma, payload = value[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or not params[0].startswith("image/") or "base64" not in params[1:]:
        raise ImageLoadError("data: URI must look like data:image/<type>;base64,<payload>")
    if "%" in payload:
        payload = unquote(payload)
    return decode_base64(payload, max_bytes, "data: URI")


DEFAULT_SHORT_SIDE = 448  # 2x the 224-pixel input of the common CLIPs, when no model says otherwise
LONG_SIDE_RATIO = 4  # the longer side is kept at most this many times the short-side bound


def downscaled_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The size an image of ``size`` is kept at: aspect ratio kept, never enlarged, the shorter side at most
    ``short_side`` and the longer side at most ``LONG_SIDE_RATIO * short_side``."""
    width, height = size
    f = min(1.0, short_side / min(width, height), LONG_SIDE_RATIO * short_side / max(width, height))
    if f >= 1.0:
        return width, height
    return max(1, round(width * f)), max(1, round(height * f))


def max_image_pixels(short_side: int) -> int:
    """The most pixels one downscaled image can have (what a load reserves before its size is known)."""
    return LONG_SIDE_RATIO * short_side * short_side


@dataclass(frozen=True)
class ImageProbe:
    """What the header says, before any pixel is decoded."""

    size: tuple[int, int]  # as stored (before EXIF orientation)
    target: tuple[int, int]  # the size the image is kept at
    decode_pixels: int  # pixels the decoder materialises (smaller than size for a JPEG decoded at reduced scale)


def _open_image(data: bytes, config: ImageFetchConfig):
    from PIL import Image

    return Image.open(BytesIO(data), formats=list(config.allowed_formats))


def _draft_box(target: tuple[int, int]) -> tuple[int, int]:
    """JPEG's DCT scaling is an area average, so decoding at just >= the target (then BICUBIC) loses nothing a
    224-pixel model could see."""
    return target


def _decode_errors(config: ImageFetchConfig):
    """Map PIL's exceptions for bad client bytes to ImageLoadError (a context manager)."""
    from PIL import Image, UnidentifiedImageError

    @contextlib.contextmanager
    def mapping():
        try:
            yield
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageLoadError(f"image has too many pixels ({e})") from None
        except UnidentifiedImageError:
            raise ImageLoadError(
                f"data is not an image in an accepted format ({', '.join(config.allowed_formats)})"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
            raise ImageLoadError(f"image data is corrupt or truncated ({type(e).__name__}: {str(e)[:100]})") from None

    return mapping()


def probe_image(data: bytes, config: ImageFetchConfig, short_side: int = DEFAULT_SHORT_SIDE) -> ImageProbe:
    """Check an image from its header alone: accepted format, positive size, at most ``max_pixels`` (a 100-byte
    PNG can declare 30000x30000, so this runs before any pixel is decoded), structure intact (``verify()``).
    Returns the size it will be kept at and the pixels decoding it will take."""
    with _decode_errors(config):
        with _open_image(data, config) as probe:
            width, height = probe.size
            if width <= 0 or height <= 0:
                raise ImageLoadError(f"image has invalid dimensions {width}x{height}")
            if width * height > config.max_pixels:
                raise ImageLoadError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {config.max_pixels}"
                )
            target = downscaled_size((width, height), short_side)
            fmt = probe.format
            probe.verify()
        decode_pixels = width * height
        if target != (width, height) and fmt == "JPEG":
            with _open_image(data, config) as drafted:  # DCT scaling: the decoder itself produces 1/2, 1/4 or 1/8 size
                drafted.draft(None, _draft_box(target))
                decode_pixels = drafted.size[0] * drafted.size[1]
    return ImageProbe((width, height), target, decode_pixels)


def decode_image(data: bytes, config: ImageFetchConfig, short_side: int = DEFAULT_SHORT_SIDE, probe: ImageProbe | None = None):
    """Bytes -> RGB ``PIL.Image.Image``, downscaled (:func:`downscaled_size`), upright, after the header checks of
    :func:`probe_image`. A JPEG is decoded at reduced scale; other formats are decoded whole and reduced at once,
    so only the small image outlives this call."""
    probe = probe or probe_image(data, config, short_side)
    try:
        with _decode_errors(config):
            image = _open_image(data, config)
            orientation = _orientation(image)
            if probe.target != probe.size and image.format == "JPEG":
                image.draft(None, _draft_box(probe.target))
            image.load()
            image = _downscale(image, probe.target)
            image = _apply_orientation(image, orientation)
            return _to_rgb(image)
    finally:
        if probe.decode_pixels >= TRIM_AFTER_PIXELS:
            _release_freed_memory()


TRIM_AFTER_PIXELS = 4_000_000  # a decode this large returns its freed buffers to the OS at once


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def _release_freed_memory() -> None:
    """Give the freed full-size decode buffer back to the OS. glibc raises its mmap threshold after the first large
    free, so later multi-megabyte buffers come from per-thread heaps that keep freed memory: decoding in a pool of
    threads then grows the process by about one full-size image per thread (measured: +1 GB instead of +0.2 GB for
    16 40-megapixel PNGs), although the pixel budgets bound what is live. ``malloc_trim`` returns it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


STRIP_PIXELS = 1_000_000  # full-resolution pixels converted/reduced at a time while downscaling


def _work_mode(mode: str, info: dict) -> str:
    """The mode an image is averaged in: palette and bilevel images cannot be averaged as they are."""
    if mode == "P":
        return "RGBA" if "transparency" in info else "RGB"
    if mode == "PA":
        return "RGBA"
    if mode == "1":
        return "L"
    if mode.startswith("I;16"):
        return "I"
    return mode


def _downscale(image, target: tuple[int, int]):
    """Resize to ``target`` (BICUBIC), after box-reducing a large image by an integer factor strip by strip: the
    decoded full-size image is the only full-size buffer (no converted, premultiplied or reduced full-size copy
    is ever made), so decoding costs at most Pillow's 4 bytes per pixel (RGB is stored as 32-bit pixels)."""
    from PIL import Image

    if image.size == target:
        return image
    width, height = image.size
    factor = min(width // target[0], height // target[1]) // 2  # keep >= 2x the target for the final resample
    mode = _work_mode(image.mode, image.info)
    if factor >= 2:
        rows = max(factor, STRIP_PIXELS // width // factor * factor)
        out = Image.new(mode, (-(-width // factor), -(-height // factor)))
        for y in range(0, height, rows):
            strip = image.crop((0, y, width, min(height, y + rows)))
            if strip.mode != mode:
                strip = strip.convert(mode)
            out.paste(strip.reduce(factor), (0, y // factor))
        image = out
    elif image.mode != mode:
        image = image.convert(mode)  # under 4x the target on each side: small
    return image.resize(target, Image.Resampling.BICUBIC)


_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _orientation(image) -> int:
    """The EXIF orientation (phone photos), read before decoding: resampled images no longer carry it."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if value in _TRANSPOSE else 1
    except Exception:  # a broken EXIF block is not worth failing the image for
        return 1


def _apply_orientation(image, orientation: int):
    """Turn the image upright, so the model sees it the way a viewer shows it."""
    from PIL import Image

    if orientation == 1:
        return image
    return image.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))


def _to_rgb(image):
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit greyscale: scale, don't saturate at 255
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    try:
        import certifi

        default = certifi.where()
    except ImportError:  # pragma: no cover
        default = None
    ctx = ssl.create_default_context(cafile=ca_bundle or default)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _short(url: str) -> str:
    return url if len(url) <= MAX_REASON_URL else url[: MAX_REASON_URL - 3] + "..."


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
        raise ImageLoadError(f"URL {_short(str(url))!r} has no host")
    port = _url_port(url)
    entries = _allow_entries(config.allow_hosts)
    if _name_allowed(entries, host, port):
        return
    port_refused = ImageLoadError(
        f"port {port} is not allowed for image URLs; allowed: {', '.join(map(str, config.allowed_ports))}"
    )
    if _is_ip_literal(host):
        ip = ipaddress.ip_address(host)
        if _ip_allowed(entries, ip, port):
            return
        problem = address_problem(ip)
        if problem is not None:
            raise ImageLoadError(f"host {host!r} is {problem}, which image URLs may not reach")
        if port not in config.allowed_ports:
            raise port_refused
    elif port not in config.allowed_ports and not any(e.network is not None and e.port in (None, port) for e in entries):
        raise port_refused  # (with a network entry that may match this port, the resolved address decides)


async def _vetted_addresses(url, config: ImageFetchConfig) -> list[IPAddress]:
    """Check the URL (:func:`check_url`), resolve its host and return the addresses it may connect to (non-empty)
    or raise."""
    check_url(url, config)
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    port = _url_port(url)
    entries = _allow_entries(config.allow_hosts)
    addresses = await resolver(config).resolve(host, port)
    if _name_allowed(entries, host, port):
        return addresses
    allowed, first_problem = [], None
    for ip in addresses:
        if _ip_allowed(entries, ip, port):
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


async def _read_body(response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ImageLoadError(f"image is {int(declared)} bytes (Content-Length); the limit is {max_bytes}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, auto-detected
    elif encoding in ("", "identity"):
        decoder = None
    else:
        raise ImageLoadError(f"unsupported Content-Encoding {encoding!r}")
    too_big = ImageLoadError(f"image is larger than the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for raw in response.aiter_raw():
        if decoder is None:
            data = raw
        else:
            try:
                data = decoder.decompress(raw, max_bytes - size + 1)
            except zlib.error:
                raise ImageLoadError(f"{encoding} body could not be decompressed") from None
            if decoder.unconsumed_tail:
                raise too_big
        size += len(data)
        if size > max_bytes:
            raise too_big
        chunks.append(data)
    return b"".join(chunks)


async def fetch_url(value: str, config: ImageFetchConfig) -> bytes:
    """Download one image URL under the rules in the module docstring (no deadline here: see :func:`load_image_bytes`).

    What is wrong with the client's own URL (:func:`check_url`) is told as it is; everything the network answered
    (DNS, addresses, connect, TLS, HTTP status, redirects, the body) raises :class:`FetchFailed`."""
    import httpx

    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise ImageLoadError(f"invalid URL ({e})") from None
    check_url(url, config)
    try:
        return await _fetch(url, config)
    except FetchFailed:
        raise
    except ImageLoadError as e:
        raise FetchFailed(e.reason) from None


async def _fetch(url, config: ImageFetchConfig) -> bytes:
    import httpx

    headers = {"User-Agent": config.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"}
    timeout = httpx.Timeout(config.timeout_s)
    verify = _ssl_context(config.ca_bundle)
    # No keep-alive: a connection verified for one name is never reused for another name on the same IP.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=timeout, verify=verify, headers=headers, limits=limits
    ) as client:
        for _hop in range(config.max_redirects + 1):
            addresses = await _vetted_addresses(url, config)
            response = await _open(client, url, addresses)
            try:
                if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    location = response.headers["location"]
                    try:
                        url = url.join(location)
                    except (httpx.InvalidURL, ValueError):
                        raise ImageLoadError(f"redirect to an invalid URL {_short(location)!r}") from None
                    continue
                if not 200 <= response.status_code < 300:
                    raise ImageLoadError(f"fetching {_short(str(url))!r} returned HTTP {response.status_code}")
                return await _read_body(response, config.max_bytes)
            except httpx.HTTPError as e:
                raise ImageLoadError(f"download of {_short(str(url))!r} failed ({type(e).__name__})") from None
            finally:
                await response.aclose()
    raise ImageLoadError(f"more than {config.max_redirects} redirects")


async def _open(client, url, addresses: list[IPAddress]):
    """Send the GET to the first vetted address that accepts a connection; returns a streaming response."""
    import httpx

    host = url.raw_host.decode("ascii")
    default_port = 443 if url.scheme == "https" else 80
    host_header = host if ":" not in host else f"[{host}]"
    if url.port not in (None, default_port):
        host_header += f":{url.port}"
    last: Exception | None = None
    for ip in addresses:
        pinned = url.copy_with(host=str(ipaddress.ip_address(ip.packed)))
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        request = client.build_request("GET", pinned, headers={"Host": host_header}, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as e:  # try the next vetted address
            last = e
        except httpx.HTTPError as e:
            raise ImageLoadError(f"request to {_short(str(url))!r} failed ({type(e).__name__})") from None
    reason = "TLS handshake failed" if last is not None and "SSL" in repr(last) else "could not connect"
    raise ImageLoadError(f"{reason} to {_short(str(url))!r}")


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------

class PixelBudget:
    """A first-come, first-served budget of pixels for one event loop: decoded images hold their share until
    released. A request larger than the whole budget is clamped to it (one image alone always fits).
    ``listeners`` are events set whenever someone starts waiting, so holders know to hand their images on."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self.listeners: set[asyncio.Event] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)  # granted and cancelled waiters leave the queue at once

    async def acquire(self, n: int) -> int:
        """Take ``n`` pixels (clamped to the total) once they are free; returns what was taken."""
        n = max(0, min(int(n), self.total))
        if not self._waiters and self.used + n <= self.total:
            self._take(n)
            return n
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        for event in self.listeners:
            event.set()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as the caller was cancelled: give it back
                self.release(n)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # a large waiter leaving the head may let the next ones in
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.total:
                break
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)


@dataclass
class _Shared:
    """What all requests of one replica process (one event loop) share."""

    fetches: asyncio.Semaphore  # images between fetch and the end of decoding (their file bytes are held)
    decoding: PixelBudget  # full-resolution pixels being decoded
    held: PixelBudget  # downscaled pixels held by requests until the model has embedded them


_SHARED: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _Shared]]" = weakref.WeakKeyDictionary()


def _shared(config: ImageFetchConfig) -> _Shared:
    per_loop = _SHARED.setdefault(asyncio.get_running_loop(), {})
    key = (config.max_concurrency, config.max_decoding_pixels, config.max_replica_pixels)
    found = per_loop.get(key)
    if found is None:
        found = per_loop[key] = _Shared(
            asyncio.Semaphore(config.max_concurrency), PixelBudget(config.max_decoding_pixels),
            PixelBudget(config.max_replica_pixels),
        )
    return found


def image_memory_stats() -> dict:
    """This process's (this event loop's) image memory: decoded pixels held now and at peak, and full-resolution
    pixels being decoded now and at peak, each with its limit. For /v1/stats and the memory tests."""
    out = {"held_pixels": 0, "held_pixels_peak": 0, "held_pixels_limit": 0,
           "decoding_pixels": 0, "decoding_pixels_peak": 0, "decoding_pixels_limit": 0}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return out
    for shared in _SHARED.get(loop, {}).values():
        out["held_pixels"] += shared.held.used
        out["held_pixels_peak"] += shared.held.peak
        out["held_pixels_limit"] += shared.held.total
        out["decoding_pixels"] += shared.decoding.used
        out["decoding_pixels_peak"] += shared.decoding.peak
        out["decoding_pixels_limit"] += shared.decoding.total
    return out


async def load_image_bytes(value: str, config: ImageFetchConfig) -> bytes:
    """The file bytes of one image input string (URL fetched under the deadline, data URI or base64 decoded)."""
    m = _SCHEME.match(value)
    if m is None:
        return decode_base64(value, config.max_bytes)
    scheme = m.group(1).lower()
    if scheme == "data":
        return decode_data_uri(value, config.max_bytes)
    if scheme not in config.allowed_schemes:
        raise ImageLoadError(f"URL scheme {scheme!r} is not allowed; allowed: {', '.join(config.allowed_schemes)}")
    try:
        return await asyncio.wait_for(fetch_url(value, config), timeout=config.timeout_s)
    except asyncio.TimeoutError:
        raise FetchFailed(f"fetching the image took longer than {config.timeout_s:g}s") from None


FETCH_FAILURE_KINDS = (  # (kind, words in the reason): the first match names a failure's kind
    ("timeout", ("took longer", "timed out", "timeout")), ("dns", ("resolve", "dns")),
    ("address", ("may not reach",)), ("tls", ("tls", "ssl", "certificate")), ("redirect", ("redirect",)),
    ("too_large", ("larger than", "limit of")), ("http_status", ("status", "http ")), ("connect", ("connect",)),
)
FETCH_FAILURES: Counter = Counter()  # kind -> failed fetches in this process (exported as a metric by the replica)


def fetch_failure_counts() -> dict[str, int]:
    """Failed fetches by kind in this process. A function, not the Counter itself, for callers elsewhere: a Serve
    deployment class may be pickled by value, and a global it captured would be a copy, not this process's."""
    return dict(FETCH_FAILURES)


def fetch_failure_kind(reason: str) -> str:
    low = reason.lower()
    return next((kind for kind, words in FETCH_FAILURE_KINDS if any(w in low for w in words)), "other")


def _client_detail(position: int, value: str, error: ImageLoadError) -> str:
    """The detail a client gets for a bad image; a failed fetch is only "could not fetch", its reason is logged."""
    if isinstance(error, FetchFailed):
        FETCH_FAILURES[fetch_failure_kind(error.reason)] += 1
        logger.info(
            "image input[%d] %s could not be fetched: %s", position, _short(value.split("?", 1)[0]), error.reason
        )
        return f"input[{position}]: could not fetch image {position}"
    return f"input[{position}]: {error.reason}"


async def embed_images(
    values: list[str], positions: list[int], config: ImageFetchConfig,
    embed: Callable[[list], Awaitable[Collection]], *, short_side: int | None = None,  # one result per image
) -> list:
    """Load image inputs and pass the decoded images to ``embed`` in chunks, never holding more decoded pixels than
    the request's budget (``max_request_pixels``) and the replica's (``max_replica_pixels``); returns ``embed``'s
    per-image results in the order of ``values``.

    ``positions[i]`` is the request position of ``values[i]`` (for error details). Each image is decoded and
    downscaled at once (:func:`decode_image`, shorter side at most ``short_side``; default ``max_short_side``
    or 448), so what waits for the model is small. Identical strings are fetched once, and identical file bytes
    (e.g. the same base64 with different line breaks) are decoded and embedded once: they are keyed by a SHA-256
    of the bytes. ``embed`` gets a list of RGB images and returns one result per image (e.g. a vector each).

    Before fetching, a load reserves the most pixels one image can keep (``4 * short_side**2``) from both budgets
    and gives back the difference once the header says the real size; decoded images wait in a queue that is
    handed to ``embed`` whenever a load of this request, or of any request of the replica, waits for room, and
    when the loads are done. So each budget always drains, and no request can block another forever. If any image
    is bad, raises :class:`InvalidImage` ``"input[<pos>]: <reason>"`` for the lowest bad position (loads at later
    positions are cancelled as soon as that is certain, and no more chunks are embedded).
    """
    if len(values) != len(positions):
        raise ValueError(f"{len(values)} values but {len(positions)} positions")
    if not values:
        return []
    side = short_side or config.max_short_side or DEFAULT_SHORT_SIDE
    reserve = max_image_pixels(side)
    shared = _shared(config)
    mine = PixelBudget(config.max_request_pixels)
    my_fetches = asyncio.Semaphore(min(config.max_fetches_per_request, config.max_concurrency))
    loop = asyncio.get_running_loop()

    first_pos: dict[str, int] = {}
    for v, p in zip(values, positions, strict=True):
        first_pos[v] = min(p, first_pos.get(v, p))
    digest_of: dict[str, str] = {}  # value -> SHA-256 of its bytes
    digest_pos: dict[str, int] = {}  # digest -> lowest position of the values with those bytes (so far)
    owners: dict[str, asyncio.Future] = {}  # digest -> outcome of the one load that decodes those bytes
    owning: set[str] = set()  # values whose load decodes (never cancelled early: others may wait on it)
    rows: dict[str, Any] = {}  # digest -> embed's result
    ready: list[tuple[str, Any, int]] = []  # (digest, image, pixels held in both budgets)
    wake = asyncio.Event()

    def give_back(n: int) -> None:
        if n:
            mine.release(n)
            shared.held.release(n)

    def position(value: str) -> int:
        digest = digest_of.get(value)
        return first_pos[value] if digest is None else digest_pos[digest]

    async def decode(value: str, data: bytes, digest: str, held: int) -> int:
        """Decode as the owner of ``digest``; returns what is still held (0: handed to ``ready``)."""
        outcome = owners[digest] = loop.create_future()
        owning.add(value)
        try:
            probe = await asyncio.to_thread(probe_image, data, config, side)
            taken = await shared.decoding.acquire(probe.decode_pixels)
            try:
                image = await asyncio.to_thread(decode_image, data, config, side, probe)
            finally:
                shared.decoding.release(taken)
        except BaseException as e:
            if isinstance(e, ImageLoadError):
                outcome.set_exception(e)
                outcome.exception()  # retrieved: a failure nobody else waits for is not "never retrieved"
            else:
                outcome.cancel()
            raise
        keep = min(held, image.size[0] * image.size[1])
        give_back(held - keep)  # the reservation was for the largest possible image
        ready.append((digest, image, keep))
        outcome.set_result(None)
        wake.set()
        return 0

    async def load(value: str) -> None:
        held = 0
        try:
            held = await mine.acquire(reserve)
            try:
                await shared.held.acquire(held)
            except BaseException:
                mine.release(held)
                held = 0
                raise
            async with my_fetches, shared.fetches:  # the file bytes live only inside this block
                data = await load_image_bytes(value.strip(), config)
                digest = hashlib.sha256(data).hexdigest()
                digest_of[value] = digest
                digest_pos[digest] = min(first_pos[value], digest_pos.get(digest, first_pos[value]))
                outcome = owners.get(digest)
                if outcome is None:
                    held = await decode(value, data, digest, held)
                    return
            give_back(held)  # the same bytes are decoded by another load: hold nothing, take its outcome
            held = 0
            await asyncio.shield(outcome)
        finally:
            give_back(held)
            wake.set()

    async def flush() -> None:
        batch = ready[:]
        ready.clear()
        try:
            out = await embed([image for _, image, _ in batch])
            if len(out) != len(batch):
                raise RuntimeError(f"embed returned {len(out)} results for {len(batch)} images")
            for (digest, _, _), row in zip(batch, out, strict=True):
                rows[digest] = row
        finally:
            for _, _, n in batch:
                give_back(n)

    mine.listeners.add(wake)
    shared.held.listeners.add(wake)
    tasks = {asyncio.ensure_future(load(v)): v for v in first_pos}
    pending = set(tasks)
    failed: tuple[int, str, ImageLoadError] | None = None
    try:
        while True:
            wake.clear()
            for task in [t for t in pending if t.done()]:
                pending.discard(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    continue
                if not isinstance(exc, ImageLoadError):
                    raise exc
                value = tasks[task]
                if failed is None or first_pos[value] < failed[0]:
                    failed = (first_pos[value], value, exc)
            if failed is not None:
                for _, _, n in ready:  # the request fails: its decoded images are not needed any more
                    give_back(n)
                ready.clear()
                for task in [t for t in pending if position(tasks[t]) > failed[0] and tasks[t] not in owning]:
                    task.cancel()
                    pending.discard(task)
                if not any(position(tasks[t]) <= failed[0] for t in pending):
                    break
            elif not pending and not ready:
                break
            elif ready and (not pending or mine.waiting or shared.held.waiting):
                await flush()
                continue
            await wake.wait()
    finally:
        mine.listeners.discard(wake)
        shared.held.listeners.discard(wake)
        for task in pending:
            task.cancel()
        for _, _, n in ready:
            give_back(n)
        ready.clear()
    if failed is not None:
        raise InvalidImage(_client_detail(*failed))
    return [rows[digest_of[v]] for v in values]


async def load_images(
    values: list[str], positions: list[int], config: ImageFetchConfig, *, short_side: int | None = None
) -> list:
    """Load image inputs into RGB ``PIL.Image.Image`` objects (downscaled), in the order of ``values``; identical
    inputs give the same object. The caller holds every image: for tools and tests. The service streams images to
    the model under the pixel budgets instead (:func:`embed_images`)."""

    async def keep(images: list) -> list:
        return images

    return await embed_images(values, positions, config, keep, short_side=short_side)


def image_tokens(image, spec: ModelSpec) -> int:
    """Tokens charged for one image: ``spec.image_tokens``, the same for every image (see docs/images.md).

    The models served here look at one fixed-resolution view of every image (CLIP resizes the short side and
    centre-crops to its input size), so the work per image does not depend on the size that was sent.
    """
    return int(spec.image_tokens)
