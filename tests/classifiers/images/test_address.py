"""The SSRF address policy: address ranges, allowlist entries, schemes, credentials, ports, and the DNS pool."""
from __future__ import annotations

import asyncio
import base64
import ipaddress

import pytest

from classifiers.images.address import Resolver, address_problem
from classifiers.images.config import ImageFetchConfig
from classifiers.images.errors import ImageLoadError
from classifiers.images.stream import load_images
from tests.classifiers.images.helpers import load, not_fetched, refused, run
from tests.image_server import PNG


@pytest.mark.parametrize(
    "address, problem",
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.255", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "private"),  # TEST-NET-1 documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),  # documentation
        ("::ffff:127.0.0.1", "embedding a loopback"),
        ("::ffff:10.0.0.1", "embedding a private"),
        ("::ffff:169.254.169.254", "embedding a link-local"),
        ("2002:7f00:1::", "embedding a loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "embedding a private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "embedding a loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "embedding a link-local"),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::1", "local-use NAT64"),
        ("::127.0.0.1", "reserved"),  # deprecated IPv4-compatible form
    ],
)
def test_forbidden_addresses(address, problem):
    found = address_problem(ipaddress.ip_address(address))
    assert found is not None and problem in found, (address, found)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses(address):
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address, problem",
    [
        ("fec0::1", "site-local"),
        ("192.0.0.8", "private"),
        ("192.0.0.9", "private"),
        ("192.88.99.1", "reserved"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("::ffff:1.1.1.1", "IPv4-mapped"),
        ("2001::1", "private"),  # Teredo
        ("3fff::1", "documentation"),
        ("5f00::1", "reserved"),
        ("100::1", "reserved"),
        ("4000::1", "reserved"),  # outside 2000::/3, the only global unicast block
    ],
)
def test_addresses_that_are_not_globally_reachable(address, problem):
    """IANA's special-purpose registries (is_global semantics), the same on every Python version."""
    found = address_problem(ipaddress.ip_address(address))
    assert found is not None and problem in found, (address, found)


def test_network_allowlist_entry(server):
    (image,) = load([server.url("/img.png")], ImageFetchConfig(allow_hosts=["127.0.0.0/8"], timeout_s=5))
    assert image.size == (20, 10)


def test_loopback_url_is_refused_without_the_allowlist(server, fetch_log):
    msg = refused(["data:image/png;base64," + base64.b64encode(PNG).decode(), server.url("/img.png")], ImageFetchConfig(), [3, 4])
    assert msg.startswith("input[4]:") and "loopback" in msg
    # A name's DNS answer is not the client's business: only the server log says it resolved to loopback.
    assert "loopback" in not_fetched(["http://localhost/img.png"], ImageFetchConfig(), fetch_log, 0)


def test_allowlist_port_must_match(server):
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port + 1 if server.port < 65535 else 1}"])
    assert "loopback" in refused([server.url("/img.png")], cfg)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/a.png", "scheme 'ftp'"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("C:\\images\\cat.png", "scheme 'c'"),
    ],
)
def test_unsupported_schemes(value, fragment):
    msg = refused([value], ImageFetchConfig(), [3])
    assert msg.startswith("input[3]:") and fragment in msg


def test_https_only_config_refuses_http(server):
    cfg = ImageFetchConfig(allowed_schemes=["https"], allow_hosts=[f"127.0.0.1:{server.port}"])
    assert "scheme 'http' is not allowed" in refused([server.url("/img.png")], cfg)


def test_credentials_in_url_are_refused(server, cfg):
    assert "credentials" in refused([f"http://user:pw@127.0.0.1:{server.port}/img.png"], cfg)


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("http://8.8.8.8:22/x.png", "port 22 is not allowed for image URLs; allowed: 80, 443"),
        ("https://example.com:6379/x.png", "port 6379 is not allowed"),
        ("http://[2606:4700:4700::1111]:8080/x.png", "port 8080 is not allowed"),
    ],
)
def test_only_ports_80_and_443_by_default(url, fragment):
    """Refused from the URL alone (nothing is resolved or contacted), so the reason can be told as it is."""
    msg = refused([url], ImageFetchConfig(), [2])
    assert msg.startswith("input[2]: ") and fragment in msg, msg


def test_allowed_ports_are_configurable_and_allowlist_entries_open_their_port(server):
    assert "port 22" in refused(["http://8.8.8.8:22/x.png"], ImageFetchConfig(allowed_ports=[80, 8080]))
    # An allowlisted host without a port: any port of it; with a port: that port only (tests/conftest.py's form).
    (image,) = load([server.url("/img.png", host="localhost")], ImageFetchConfig(allow_hosts=["localhost"], timeout_s=5))
    assert image.size == (20, 10)
    (image,) = load([server.url("/img.png")], ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port}"], timeout_s=5))
    assert image.size == (20, 10)


def test_unresolvable_host(cfg, fetch_log):
    logged = not_fetched(["http://no-such-host.invalid/img.png"], cfg.model_copy(update={"timeout_s": 3}), fetch_log, 0)
    assert "resolve" in logged or "longer than" in logged


def test_dns_lookups_run_in_their_own_bounded_pool_and_time_out():
    """A hanging resolver occupies at most `dns_threads` threads of the fetcher's own pool; every lookup gives up
    after its timeout instead of piling up threads in the default executor."""
    import threading

    release, lock = threading.Event(), threading.Lock()
    seen = {"now": 0, "max": 0, "threads": set()}

    def hanging_getaddrinfo(host, port, **kw):
        with lock:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
            seen["threads"].add(threading.current_thread().name)
        release.wait(30)
        with lock:
            seen["now"] -= 1
        return []

    resolver = Resolver(threads=2, timeout_s=0.2, getaddrinfo=hanging_getaddrinfo)

    async def go():
        return await asyncio.gather(*(resolver.resolve(f"h{i}.example", 80) for i in range(5)), return_exceptions=True)

    try:
        results = run(go)
        assert all(isinstance(r, ImageLoadError) and "took longer than 0.2s" in r.reason for r in results), results
        assert seen["max"] == 2 and all(name.startswith("image-dns") for name in seen["threads"])
    finally:
        release.set()
        resolver.close()


def test_url_fetches_never_resolve_in_the_default_executor(server):
    """Names are resolved by the fetcher's own pool: the loop's default executor (decoding, model work) only
    ever sees the decoding, never getaddrinfo."""
    from concurrent.futures import ThreadPoolExecutor

    submitted: list[str] = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            inner = fn.args[0] if hasattr(fn, "args") and fn.args else fn
            submitted.append(getattr(inner, "__name__", repr(inner)))
            return super().submit(fn, *args, **kwargs)

    async def go():
        asyncio.get_running_loop().set_default_executor(Recording(max_workers=2))
        cfg = ImageFetchConfig(allow_hosts=[f"localhost:{server.port}"], timeout_s=5)
        return await load_images([server.url("/img.png", host="localhost")], [0], cfg)

    (image,) = run(go)
    assert image.size == (20, 10)
    assert "decode_image" in submitted and "getaddrinfo" not in submitted, submitted
