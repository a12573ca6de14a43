"""Client URLs fetched hop by hop, each hop re-vetted and pinned to its vetted IP, so none can reach inside."""
from __future__ import annotations

import ipaddress
import ssl
import zlib
from functools import lru_cache

from classifiers.images.address import check_url, vetted_addresses
from classifiers.images.allowlist import IPAddress
from classifiers.images.config import ImageFetchConfig
from classifiers.images.errors import FetchFailed, ImageLoadError, short_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


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
    """Download one image URL (no deadline here: see :func:`classifiers.images.stream.load_image_bytes`).

    The first URL and every redirect hop (followed here one at a time, never by httpx) pass :func:`check_url` and
    :func:`vetted_addresses`; the connection goes to a vetted IP (``Host``, the TLS SNI name and the certificate
    check keep the URL's name), environment proxies are ignored, no connection is kept alive, and the body is
    abandoned past ``max_bytes`` (docs/images.md, Fetching URLs safely).

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
            addresses = await vetted_addresses(url, config)
            response = await _open(client, url, addresses)
            try:
                if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    location = response.headers["location"]
                    try:
                        url = url.join(location)
                    except (httpx.InvalidURL, ValueError):
                        raise ImageLoadError(f"redirect to an invalid URL {short_url(location)!r}") from None
                    continue
                if not 200 <= response.status_code < 300:
                    raise ImageLoadError(f"fetching {short_url(str(url))!r} returned HTTP {response.status_code}")
                return await _read_body(response, config.max_bytes)
            except httpx.HTTPError as e:
                raise ImageLoadError(f"download of {short_url(str(url))!r} failed ({type(e).__name__})") from None
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
            raise ImageLoadError(f"request to {short_url(str(url))!r} failed ({type(e).__name__})") from None
    reason = "TLS handshake failed" if last is not None and "SSL" in repr(last) else "could not connect"
    raise ImageLoadError(f"{reason} to {short_url(str(url))!r}")
