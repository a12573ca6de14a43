"""Images from request strings: decoding, and fetching URLs without opening an SSRF hole.

An image input is a string in one of three forms:

* an ``http://`` / ``https://`` URL (schemes configurable, see :class:`ImageFetchConfig`),
* a ``data:image/<type>;base64,<payload>`` URI,
* raw base64 of the image file (whitespace and missing ``=`` padding tolerated, URL-safe alphabet too).

Fetching a URL a client sent is a security boundary (server-side request forgery). The rules, checked for
the first URL *and again for every redirect hop* (redirects are followed here, one hop at a time, never by
the HTTP library):

1. the scheme must be in ``allowed_schemes`` (http/https); ``file:``, ``ftp:``, ``gopher:`` ... are refused,
   and so are URLs carrying credentials (``user:pass@``);
2. the host is resolved once; every resolved address must be publicly routable unless the operator allowlisted
   it (:attr:`ImageFetchConfig.allow_hosts`). Refused: loopback, private (RFC 1918, ULA), link-local (incl. the
   169.254.169.254 cloud metadata service), multicast, reserved, unspecified, shared/CGNAT 100.64.0.0/10,
   documentation and benchmarking ranges, and IPv6 forms that embed one of those (IPv4-mapped ``::ffff:a.b.c.d``,
   6to4 ``2002::/16``, Teredo, NAT64 ``64:ff9b::/96``). Only addresses that pass are used;
3. the connection goes to the vetted address itself (the URL's host is replaced by the IP; ``Host`` and, for
   https, the TLS SNI name and certificate check keep the original name), so a second DNS answer cannot
   rebind the request to another address;
4. environment proxies are ignored, one total deadline (``timeout_s``) covers DNS, redirects and the body;
5. the body is streamed and abandoned as soon as it exceeds ``max_bytes`` (a larger ``Content-Length`` is
   refused before reading); compressed transfer encodings are decompressed with the same cap;
6. the bytes must decode as one of ``allowed_formats`` (format plugins such as EPS, which would run
   Ghostscript, are never consulted); the pixel count from the header is checked against ``max_pixels``
   before any pixel is decoded (PIL's own decompression-bomb guard stays on as a backstop); ``verify()`` then a
   full ``load()`` must succeed; the EXIF orientation is applied and the result converted to RGB (transparency
   composited on white).

Base64 and data-URI images get the same byte cap, format and pixel checks. :func:`load_images` loads a request's
images concurrently (bounded per process by ``max_concurrency``) and raises
:class:`~classifiers.errors.InvalidImage` naming the request position of the first bad image. No Ray imports.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
import ssl
import weakref
import zlib
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Any, Union
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from classifiers.errors import InvalidImage
from classifiers.registry import ModelSpec

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
        description="Largest width*height accepted, checked from the image header before decoding (decompression "
        "bombs). A decoded RGB image takes 3 bytes per pixel; at most 2x PIL's own bomb limit.",
    )
    max_redirects: int = Field(default=3, ge=0, le=20, description="Redirect hops followed per URL; each is re-checked.")
    max_concurrency: int = Field(
        default=8, ge=1, le=256, description="Images fetched and decoded at the same time per replica process."
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

_SHARED_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64_WKP = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def address_problem(ip: IPAddress) -> str | None:
    """Why a connection to ``ip`` is refused (e.g. ``"a loopback address"``), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # drop any %scope
        embedded: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            embedded = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        elif ip.teredo is not None:
            embedded = ip.teredo[1]
        elif ip in _NAT64_WKP:
            embedded = ipaddress.IPv4Address(ip.packed[-4:])
        elif ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if embedded is not None:  # the IPv4 address the packets really go to decides
            inner = address_problem(embedded)
            return None if inner is None else f"an IPv6 address embedding {inner}"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
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


def decode_image(data: bytes, config: ImageFetchConfig):
    """Bytes -> RGB ``PIL.Image.Image``, with the format allowlist, pixel cap and integrity checks."""
    from PIL import Image, UnidentifiedImageError

    formats = list(config.allowed_formats)
    try:
        with Image.open(BytesIO(data), formats=formats) as probe:
            width, height = probe.size
            if width <= 0 or height <= 0:
                raise ImageLoadError(f"image has invalid dimensions {width}x{height}")
            if width * height > config.max_pixels:
                raise ImageLoadError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {config.max_pixels}"
                )
            probe.verify()
        image = Image.open(BytesIO(data), formats=formats)
        image.load()
        image = _upright(image)
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
    return _to_rgb(image)


def _upright(image):
    """Apply the EXIF orientation (phone photos), so the model sees the image the way a viewer shows it."""
    from PIL import ImageOps

    try:
        if image.getexif().get(0x0112, 1) in (1, None):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is not worth failing the image for
        return image


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


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses of ``host`` (one lookup; IP literals come back as themselves), in resolver order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
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


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def _vetted_addresses(url, config: ImageFetchConfig) -> list[IPAddress]:
    """Check the URL's scheme/host and return the resolved addresses it may connect to (non-empty) or raise."""
    scheme = url.scheme.lower()
    if scheme not in config.allowed_schemes:
        raise ImageLoadError(f"URL scheme {scheme!r} is not allowed; allowed: {', '.join(config.allowed_schemes)}")
    if url.userinfo:
        raise ImageLoadError("image URLs with credentials (user:password@) are not accepted")
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise ImageLoadError(f"URL {_short(str(url))!r} has no host")
    port = url.port or (443 if scheme == "https" else 80)
    entries = _allow_entries(config.allow_hosts)
    addresses = await _resolve(host, port)
    if _name_allowed(entries, host, port):
        return addresses
    allowed, first_problem = [], None
    for ip in addresses:
        problem = None if _ip_allowed(entries, ip, port) else address_problem(ip)
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
    """Download one image URL under the rules in the module docstring (no deadline here: see :func:`_load_one`)."""
    import httpx

    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise ImageLoadError(f"invalid URL ({e})") from None
    headers = {"User-Agent": config.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"}
    timeout = httpx.Timeout(config.timeout_s)
    verify = _ssl_context(config.ca_bundle)
    # No keep-alive: a connection verified for one name is never reused for another name on the same IP.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=timeout, verify=verify, headers=headers, limits=limits
    ) as client:
        for hop in range(config.max_redirects + 1):
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

_SEMAPHORES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]]" = (
    weakref.WeakKeyDictionary()
)


def _semaphore(limit: int) -> asyncio.Semaphore:
    per_loop = _SEMAPHORES.setdefault(asyncio.get_running_loop(), {})
    sem = per_loop.get(limit)
    if sem is None:
        sem = per_loop[limit] = asyncio.Semaphore(limit)
    return sem


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
        raise ImageLoadError(f"fetching the image took longer than {config.timeout_s:g}s") from None


async def _load_one(value: str, config: ImageFetchConfig, sem: asyncio.Semaphore):
    async with sem:
        data = await load_image_bytes(value.strip(), config)
        return await asyncio.to_thread(decode_image, data, config)


async def load_images(values: list[str], positions: list[int], config: ImageFetchConfig) -> list:
    """Load image inputs concurrently into RGB ``PIL.Image.Image`` objects, in the order of ``values``.

    ``positions[i]`` is the request position of ``values[i]``. Identical strings are loaded once. If any image
    is bad, raises :class:`InvalidImage` ``"input[<pos>]: <reason>"`` for the lowest bad position (loads at
    later positions are cancelled as soon as that is certain).
    """
    if len(values) != len(positions):
        raise ValueError(f"{len(values)} values but {len(positions)} positions")
    if not values:
        return []
    sem = _semaphore(config.max_concurrency)
    first_pos: dict[str, int] = {}
    for v, p in zip(values, positions):
        first_pos[v] = min(p, first_pos.get(v, p))
    tasks = {asyncio.ensure_future(_load_one(v, config, sem)): v for v in first_pos}
    loaded: dict[str, Any] = {}
    failed: tuple[int, str] | None = None
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                value = tasks[task]
                exc = task.exception()
                if exc is None:
                    loaded[value] = task.result()
                elif isinstance(exc, ImageLoadError):
                    if failed is None or first_pos[value] < failed[0]:
                        failed = (first_pos[value], exc.reason)
                else:
                    raise exc
            if failed is not None:
                later = {t for t in pending if first_pos[tasks[t]] > failed[0]}
                for t in later:
                    t.cancel()
                pending -= later
                if later:
                    await asyncio.gather(*later, return_exceptions=True)
    finally:
        for t in pending:
            t.cancel()
    if failed is not None:
        raise InvalidImage(f"input[{failed[0]}]: {failed[1]}")
    return [loaded[v] for v in values]


def image_tokens(image, spec: ModelSpec) -> int:
    """Tokens charged for one image: ``spec.image_tokens``, the same for every image (see docs/images.md).

    The models served here look at one fixed-resolution view of every image (CLIP resizes the short side and
    centre-crops to its input size), so the work per image does not depend on the size that was sent.
    """
    return int(spec.image_tokens)
