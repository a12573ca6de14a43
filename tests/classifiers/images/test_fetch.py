"""Fetching URLs: redirects re-checked per hop, pinned IP with Host and SNI, body caps, one generic failure."""
from __future__ import annotations

import time

import pytest

from classifiers.images.config import ImageFetchConfig
from tests.classifiers.images.helpers import load, not_fetched, refused
from tests.image_server import _Server


def test_url_images_from_an_allowlisted_server(server, cfg):
    images = load([server.url("/img.png"), server.url("/img.jpg"), server.url("/rgba.png"), server.url("/gzip.png")], cfg)
    assert [im.size for im in images] == [(20, 10), (16, 16), (8, 8), (20, 10)]
    assert all(im.mode == "RGB" for im in images)
    assert images[2].getpixel((0, 0)) == (255, 255, 255)  # transparent pixels composited on white
    assert server.hosts[-1] == f"127.0.0.1:{server.port}"


def test_relative_and_absolute_redirects_within_the_allowlist_are_followed(server, cfg):
    images = load(
        [server.url("/redirect?to=/img.png"), server.url(f"/redirect?code=308&to={server.url('/img.jpg')}")], cfg
    )
    assert [im.size for im in images] == [(20, 10), (16, 16)]


def test_allowlist_by_hostname_keeps_the_host_header(server):
    cfg = ImageFetchConfig(allow_hosts=[f"localhost:{server.port}"], timeout_s=5)
    (image,) = load([server.url("/img.png", host="localhost")], cfg)
    assert image.size == (20, 10)
    assert server.hosts[-1] == f"localhost:{server.port}"  # the request went to the pinned IP, Host unchanged


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://127.0.0.1:{other}/img.png", "loopback"),
        ("http://localhost/img.png", "loopback"),
        ("http://8.8.8.8:8080/img.png", "port 8080 is not allowed"),
        ("http://[fec0::1]/img.png", "site-local"),
        ("http://192.0.0.8/img.png", "private"),
        ("http://[::ffff:8.8.8.8]/img.png", "IPv4-mapped"),
        ("http://10.0.0.1/img.png", "private"),
        ("http://192.168.1.1/img.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/x.png", "shared (CGNAT)"),
        ("http://[::1]:{other}/img.png", "loopback"),
        ("http://[::ffff:127.0.0.1]:{other}/img.png", "embedding a loopback"),
        ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "embedding a link-local"),
        ("http://0.0.0.0:{other}/img.png", "unspecified"),
        ("file:///etc/passwd", "scheme 'file'"),
    ],
)
def test_redirect_to_a_forbidden_target_is_refused(server, other_server, cfg, fetch_log, target, reason):
    before = len(other_server.hits)
    location = target.format(other=other_server.port)
    logged = not_fetched([server.url("/img.png"), server.url(f"/redirect?to={location}")], cfg, fetch_log, 1, [0, 1])
    assert reason in logged, logged
    assert len(other_server.hits) == before  # never contacted


def test_too_many_redirects(server, cfg, fetch_log):
    assert "more than 3 redirects" in not_fetched([server.url("/loop/0")], cfg, fetch_log, 2, [2])
    no_redirects = cfg.model_copy(update={"max_redirects": 0})
    assert "more than 0 redirects" in not_fetched([server.url("/redirect?to=/img.png")], no_redirects, fetch_log, 0)


def test_oversize_by_content_length(server, cfg, fetch_log):
    logged = not_fetched([server.url("/big")], cfg, fetch_log, 5, [5])
    assert "Content-Length" in logged and str(8 * 1024 * 1024) in logged


def test_oversize_streamed_without_content_length(server, cfg, fetch_log):
    small = cfg.model_copy(update={"max_bytes": 100_000})
    assert "larger than the limit of 100000 bytes" in not_fetched([server.url("/big-stream")], small, fetch_log, 0)


def test_gzip_bomb_is_capped_while_decompressing(server, cfg, fetch_log):
    small = cfg.model_copy(update={"max_bytes": 1024 * 1024})
    assert "larger than the limit" in not_fetched([server.url("/gzip-bomb")], small, fetch_log, 0)


def test_http_error_status(server, cfg, fetch_log):
    assert "HTTP 404" in not_fetched([server.url("/status/404")], cfg, fetch_log, 0)


def test_timeout_on_a_slow_server(server, cfg, fetch_log):
    fast = cfg.model_copy(update={"timeout_s": 0.5})
    started = time.perf_counter()
    assert "longer than 0.5s" in not_fetched([server.url("/slow")], fast, fetch_log, 9, [9])
    assert time.perf_counter() - started < 1.5


def test_https_connects_to_the_pinned_ip_with_sni_and_certificate_of_the_name(tls_server):
    cfg = ImageFetchConfig(allow_hosts=[f"localhost:{tls_server.port}"], ca_bundle=tls_server.ca, timeout_s=5)
    (image,) = load([tls_server.url("/img.png", host="localhost", scheme="https")], cfg)
    assert image.size == (20, 10)
    assert tls_server.sni[-1] == "localhost"
    assert tls_server.hosts[-1] == f"localhost:{tls_server.port}"


def test_https_certificate_is_verified(tls_server, fetch_log):
    # Reached by IP, the certificate (for 'localhost') does not match: refused, not silently accepted.
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{tls_server.port}"], ca_bundle=tls_server.ca, timeout_s=5)
    assert "TLS" in not_fetched([tls_server.url("/img.png", scheme="https")], cfg, fetch_log, 0)
    # And with the default trust store, the throwaway CA is unknown.
    default = ImageFetchConfig(allow_hosts=[f"localhost:{tls_server.port}"], timeout_s=5)
    assert "TLS" in not_fetched([tls_server.url("/img.png", host="localhost", scheme="https")], default, fetch_log, 0)


def test_fetch_failures_all_look_the_same_to_the_client(server, tls_server, fetch_log):
    """Connection refused, TLS failure, HTTP error, a name resolving to a private address, a timeout: the client
    gets one detail for all of them (no port scanning through the service); the server log has each reason."""
    closed = _Server()
    closed_port = closed.port
    closed.close()
    cases = [
        (f"http://127.0.0.1:{closed_port}/img.png", [f"127.0.0.1:{closed_port}"], "could not connect"),
        (tls_server.url("/img.png", scheme="https"), [f"127.0.0.1:{tls_server.port}"], "TLS"),
        (server.url("/status/500"), [f"127.0.0.1:{server.port}"], "HTTP 500"),
        ("http://localhost/img.png", [], "loopback"),
        (server.url("/slow"), [f"127.0.0.1:{server.port}"], "longer than"),
    ]
    details = set()
    for url, allow, reason in cases:
        cfg = ImageFetchConfig(allow_hosts=allow, timeout_s=0.5, ca_bundle=getattr(tls_server, "ca", None))
        details.add(refused([url], cfg, [7]))
        assert reason in fetch_log[-1], (reason, fetch_log[-1])
    assert details == {"input[7]: could not fetch image 7"}
