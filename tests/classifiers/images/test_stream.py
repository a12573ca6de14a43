"""Image inputs: base64 / data URI / URL decoding, and the SSRF rules of URL fetching.

URLs are served by small HTTP(S) servers on 127.0.0.1 in this process; they are reachable only because the
tests allowlist them (``allow_hosts``), which is exactly what the refusal tests take away.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import io
import ipaddress
import logging
import ssl
import time

import pytest
from PIL import Image
from pydantic import ValidationError

from classifiers.catalog.registry import BUILTIN_MODELS
from classifiers.images.stream import ImageFetchConfig, address_problem, image_tokens, load_images
from classifiers.protocol.errors import InvalidImage
from tests.image_server import JPEG, PNG, _png, _png_declaring, _Server


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def other_server():
    """A second local server that is never allowlisted: redirects to it must not reach it."""
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def cfg(server):
    return ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port}"], timeout_s=5)


def load(values, cfg, positions=None):
    positions = list(range(len(values))) if positions is None else positions
    return asyncio.run(load_images(values, positions, cfg))


def refused(values, cfg, positions=None) -> str:
    with pytest.raises(InvalidImage) as info:
        load(values, cfg, positions)
    assert info.value.code == "INPUT_INVALID_IMAGE" and info.value.status == 400
    return str(info.value)


@pytest.fixture
def fetch_log():
    """What the fetcher logged (the real reasons of fetch failures, which clients are not told)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    log, handler = logging.getLogger("ray.serve"), Keep(logging.INFO)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lines
    log.removeHandler(handler)
    log.setLevel(level)


def not_fetched(values, cfg, log: list[str], pos: int, positions=None) -> str:
    """The client gets only the generic detail for a failed fetch; returns the reason the server logged."""
    msg = refused(values, cfg, positions)
    assert msg == f"input[{pos}]: could not fetch image {pos}", msg
    assert log and f"input[{pos}]" in log[-1], log
    return log[-1]


# ---------------------------------------------------------------------------------------------- accepted inputs


def test_raw_base64_and_data_uri():
    b64 = base64.b64encode(PNG).decode()
    wrapped = "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))  # MIME line breaks
    urlsafe = base64.urlsafe_b64encode(JPEG).decode().rstrip("=")  # URL-safe alphabet, no padding
    images = load([b64, wrapped, f"data:image/png;base64,{b64}", f"DATA:image/jpeg;charset=x;BASE64,{urlsafe}", urlsafe], ImageFetchConfig())
    assert [im.size for im in images] == [(20, 10), (20, 10), (20, 10), (16, 16), (16, 16)]
    assert all(im.mode == "RGB" for im in images)


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


def test_network_allowlist_entry(server):
    (image,) = load([server.url("/img.png")], ImageFetchConfig(allow_hosts=["127.0.0.0/8"], timeout_s=5))
    assert image.size == (20, 10)


def test_identical_inputs_are_loaded_once(server, cfg):
    before = len(server.hits)
    url = server.url("/delay-ok?s=0.01&dedup=1")
    images = load([url, url, url], cfg)
    assert len(images) == 3 and len(server.hits) - before == 1


def test_concurrency_is_bounded(server):
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port}"], max_concurrency=2, timeout_s=10)
    server.max_in_flight = 0
    urls = [server.url(f"/delay-ok?s=0.15&i={i}") for i in range(6)]
    assert len(load(urls, cfg)) == 6
    assert server.max_in_flight == 2


def test_one_request_takes_at_most_its_share_of_the_fetch_slots(server):
    """A request of many slow URLs holds max_fetches_per_request of the replica's max_concurrency slots: another
    client's image is fetched beside it, and done while the big request still has images to fetch."""
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port}"], max_concurrency=4, max_fetches_per_request=2,
                           timeout_s=20)
    slow = [server.url(f"/delay-ok?s=0.3&i={i}") for i in range(8)]
    order = []

    async def both():
        async def run(name, values):
            await load_images(values, list(range(len(values))), cfg)
            order.append(name)

        big = asyncio.ensure_future(run("big", slow))
        await asyncio.sleep(0.05)
        await run("small", [server.url("/img.png?other=1")])
        await big

    server.max_in_flight = 0
    asyncio.run(both())
    assert order == ["small", "big"]
    assert server.max_in_flight == 3  # the big request's 2 slots + the small one's, never the big one's 8


def test_image_tokens_rule():
    spec = next(s for s in BUILTIN_MODELS if s.name == "clip-vit-base-patch32")
    small, large = Image.new("RGB", (10, 10)), Image.new("RGB", (4000, 3000))
    assert image_tokens(small, spec) == image_tokens(large, spec) == spec.image_tokens == 1000


# ----------------------------------------------------------------------------------------------------- refusals


def test_loopback_url_is_refused_without_the_allowlist(server, fetch_log):
    msg = refused(["data:image/png;base64," + base64.b64encode(PNG).decode(), server.url("/img.png")], ImageFetchConfig(), [3, 4])
    assert msg.startswith("input[4]:") and "loopback" in msg
    # A name's DNS answer is not the client's business: only the server log says it resolved to loopback.
    assert "loopback" in not_fetched(["http://localhost/img.png"], ImageFetchConfig(), fetch_log, 0)


def test_allowlist_port_must_match(server):
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port + 1 if server.port < 65535 else 1}"])
    assert "loopback" in refused([server.url("/img.png")], cfg)


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


def test_oversize_base64():
    b64 = base64.b64encode(_png((200, 200), color=(1, 2, 3)) + b"\x00" * 5000).decode()
    msg = refused([b64], ImageFetchConfig(max_bytes=1000), [7])
    assert msg.startswith("input[7]:") and "1000 bytes" in msg


def test_non_image_bytes(server, cfg):
    assert "not an image" in refused([server.url("/text")], cfg)
    assert "not an image" in refused([base64.b64encode(b"plain text, definitely not a picture").decode()], cfg)


def test_format_outside_the_allowlist_is_refused(server, cfg):
    assert "not an image in an accepted format" in refused([server.url("/img.tiff")], cfg)
    with_tiff = cfg.model_copy(update={"allowed_formats": ("PNG", "TIFF")})
    assert load([server.url("/img.tiff")], with_tiff)[0].size == (16, 16)


def test_pixel_bombs(server, cfg):
    msg = refused([server.url("/bomb.png")], cfg, [1])  # 30000x30000: PIL's own guard fires at open
    assert msg.startswith("input[1]:") and "pixels" in msg
    declared = base64.b64encode(_png_declaring(8000, 6000)).decode()  # 48 MP > default 40 MP, header only
    msg = refused([declared], cfg)
    assert "8000x6000" in msg and "40000000" in msg
    assert "limit is 100" in refused([base64.b64encode(PNG).decode()], cfg.model_copy(update={"max_pixels": 100}))


def test_sixteen_bit_greyscale_is_scaled_not_saturated():
    import numpy as np

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    (image,) = load([base64.b64encode(buf.getvalue()).decode()], ImageFetchConfig())
    row = np.asarray(image)[0, :, 0]
    assert image.mode == "RGB" and row[0] == 0 and row[-1] == 255 and 100 < row[32] < 160


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 255)).save(buf, "JPEG", exif=exif)
    (image,) = load([base64.b64encode(buf.getvalue()).decode()], ImageFetchConfig())
    assert image.size == (20, 40)


def test_truncated_image():
    msg = refused([base64.b64encode(JPEG[: len(JPEG) // 2]).decode()], ImageFetchConfig())
    assert "corrupt or truncated" in msg


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
    "value, fragment",
    [
        ("not*base64!", "malformed base64"),
        ("a", "malformed base64"),
        ("data:image/png;base64,@@@@", "malformed data: URI"),
        ("data:image/png,rawbytes", "data:image/<type>;base64"),
        ("data:text/plain;base64,aGVsbG8=", "data:image/<type>;base64"),
        ("data:image/png;base64,", "empty"),
    ],
)
def test_malformed_base64_and_data_uris(value, fragment):
    msg = refused([value], ImageFetchConfig(), [0])
    assert msg.startswith("input[0]:") and fragment in msg


def test_http_error_status(server, cfg, fetch_log):
    assert "HTTP 404" in not_fetched([server.url("/status/404")], cfg, fetch_log, 0)


def test_timeout_on_a_slow_server(server, cfg, fetch_log):
    fast = cfg.model_copy(update={"timeout_s": 0.5})
    started = time.perf_counter()
    assert "longer than 0.5s" in not_fetched([server.url("/slow")], fast, fetch_log, 9, [9])
    assert time.perf_counter() - started < 1.5


def test_first_bad_position_wins_even_if_a_later_one_fails_first(server, cfg, fetch_log):
    values = [server.url("/img.png"), server.url("/delay-404"), "###bad###", server.url("/img.jpg")]
    assert "HTTP 404" in not_fetched(values, cfg, fetch_log, 11, [10, 11, 12, 13])


def test_unresolvable_host(cfg, fetch_log):
    logged = not_fetched(["http://no-such-host.invalid/img.png"], cfg.model_copy(update={"timeout_s": 3}), fetch_log, 0)
    assert "resolve" in logged or "longer than" in logged


# ---------------------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An https server with a certificate for 'localhost' from a throwaway CA (written to ca.pem)."""
    pytest.importorskip("cryptography")  # installed beside ray (google-auth); only this test needs it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    s = _Server(tls=ctx)
    s.ca = str(d / "ca.pem")
    yield s
    s.close()


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


# ------------------------------------------------------------------------------------------ address classification


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


# ---------------------------------------------------------------------------------------------------------- config


def test_config_defaults_match_jina_and_are_safe():
    cfg = ImageFetchConfig()
    assert cfg.allowed_schemes == ("http", "https") and cfg.allow_hosts == ()
    assert cfg.max_bytes == 8 * 1024 * 1024 and cfg.max_redirects == 3
    for name, field in ImageFetchConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"allowed_schemes": ["http", "ftp"]}, ["'ftp'", "http", "https"]),
        ({"allowed_schemes": []}, ["empty"]),
        ({"allow_hosts": ["bad host!"]}, ["'bad host!'", "accepted forms"]),
        ({"allow_hosts": ["10.0.0.1:99999"]}, ["'10.0.0.1:99999'", "1-65535"]),
        ({"allowed_formats": ["PNG", "NOPE"]}, ["'NOPE'", "known"]),
        ({"allowed_formats": ["EPS"]}, ["EPS", "Ghostscript"]),
        ({"max_bytes": 0}, ["max_bytes"]),
        ({"unknown_field": 1}, ["unknown_field"]),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, fragments):
    with pytest.raises(ValidationError) as info:
        ImageFetchConfig(**kwargs)
    text = str(info.value)
    for f in fragments:
        assert f in text, text


def test_config_accepts_the_allowlist_forms():
    cfg = ImageFetchConfig(
        allow_hosts=["images.internal", "minio.internal:9000", "10.0.0.0/8", "127.0.0.1:8080", "::1", "[::1]:8080", "Bücher.example"],
        allowed_schemes="https",
    )
    assert cfg.allowed_schemes == ("https",) and len(cfg.allow_hosts) == 7


# ------------------------------------------------------------------------------ memory: downscale, dedup, budgets


def _encoded(size, fmt="PNG", mode="RGB", color=(250, 250, 250), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro_fn):
    """Run ``coro_fn()`` in a fresh event loop (fresh per-process budgets) and return its result."""
    return asyncio.run(coro_fn())


def test_large_images_are_downscaled_right_after_decoding():
    """CLIP needs at most its input size: an image is kept with its shorter side at most 2x that (default 448),
    its longer side at most 4x the bound, aspect ratio kept, never enlarged."""
    values = [b64(_encoded((4000, 3000))), b64(_encoded((3000, 4000), "JPEG")), b64(_encoded((8000, 500))), b64(PNG)]
    assert [im.size for im in load(values, ImageFetchConfig())] == [(597, 448), (448, 597), (1792, 112), (20, 10)]
    assert [im.size for im in load(values[:1], ImageFetchConfig(max_short_side=64))] == [(85, 64)]
    (im,) = asyncio.run(load_images(values[:1], [0], ImageFetchConfig(), short_side=224))
    assert im.size == (299, 224) and im.mode == "RGB"


@pytest.mark.parametrize("mode, color", [("RGBA", (255, 0, 0, 0)), ("P", 3), ("LA", (0, 0)), ("1", 1), ("I;16", 65535)])
def test_downscaling_keeps_every_mode_right(mode, color):
    """Palette, bilevel, 16-bit and transparent images are reduced strip by strip in a mode that can be averaged,
    with the same result as small ones: transparent pixels on white, 16-bit white stays white."""
    data = _encoded((1800, 1200), "PNG", mode, color)
    (im,) = load([b64(data)], ImageFetchConfig(max_short_side=100))
    assert im.size == (150, 100) and im.mode == "RGB"
    small = load([b64(_encoded((3, 2), "PNG", mode, color))], ImageFetchConfig())[0]
    assert im.getpixel((75, 50)) == small.getpixel((1, 1))


def test_exif_orientation_survives_downscaling():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (image,) = load([b64(_encoded((4000, 2000), "JPEG", exif=exif))], ImageFetchConfig())
    assert image.size == (448, 896)


def test_a_jpeg_is_never_decoded_at_full_size():
    """JPEG's DCT scaling decodes a 12-megapixel photo at 1/4 size directly: the full-size image never exists."""
    from classifiers.images.stream import image_memory_stats, probe_image

    data = _encoded((4000, 3000), "JPEG")
    assert probe_image(data, ImageFetchConfig()).decode_pixels == 1000 * 750

    async def go():
        await load_images([b64(data)], [0], ImageFetchConfig())
        return image_memory_stats()

    stats = run(go)
    assert stats["decoding_pixels_peak"] == 1000 * 750 and stats["decoding_pixels"] == 0


def test_a_declared_pixel_count_over_the_limit_is_refused_before_decoding():
    from classifiers.images.stream import image_memory_stats

    async def go():
        with pytest.raises(InvalidImage) as info:
            await load_images([b64(_png_declaring(8000, 6000))], [3], ImageFetchConfig())
        return str(info.value), image_memory_stats()

    msg, stats = run(go)
    assert msg == "input[3]: image is 8000x6000 = 48000000 pixels; the limit is 40000000"
    assert stats["decoding_pixels_peak"] == 0  # not one pixel was decoded


def test_identical_bytes_are_decoded_once_whatever_the_string():
    """The same file as base64 with different line breaks, padding or alphabet, and as a data URI: one decode,
    one image (de-duplicated on a hash of the bytes, not on the string)."""
    data = _encoded((640, 480), "JPEG")
    raw = b64(data)
    variants = [raw, "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)), raw.rstrip("="),
                base64.urlsafe_b64encode(data).decode(), f"data:image/jpeg;base64,{raw}", " " + raw + "\r\n"]
    chunks: list[int] = []

    async def embed(images):
        chunks.append(len(images))
        return [object() for _ in images]

    from classifiers.images.stream import embed_images

    rows = run(lambda: embed_images(variants, list(range(6)), ImageFetchConfig(), embed))
    assert chunks == [1] and len({id(r) for r in rows}) == 1
    images = load(variants + [b64(PNG)], ImageFetchConfig())
    assert len({id(im) for im in images}) == 2


def test_a_thousand_whitespace_variants_of_a_40_megapixel_png_decode_once():
    """The issue's attack: an all-white 40 MP PNG is ~100 KB; 1024 copies differing in whitespace used to be
    decoded 1024 times and held at full size (~160 GB). Now: one decode, one 717x448 image."""
    from classifiers.images.stream import embed_images, image_memory_stats

    raw = b64(_encoded((8000, 5000), "PNG", optimize=True))
    values = [raw[:i] + "\n" + raw[i:] for i in range(1, 1025)]
    embedded: list[tuple[int, int]] = []

    async def embed(images):
        embedded.extend(im.size for im in images)
        return list(range(len(images)))

    async def go():
        rows = await embed_images(values, list(range(len(values))), ImageFetchConfig(), embed)
        return rows, image_memory_stats()

    rows, stats = run(go)
    assert embedded == [(717, 448)] and rows == [0] * 1024
    assert stats["decoding_pixels_peak"] == 40_000_000 and stats["held_pixels"] == 0
    assert stats["held_pixels_peak"] <= stats["held_pixels_limit"]


def test_a_request_holds_at_most_its_pixel_budget():
    """Twelve distinct 448x448 images (200,704 pixels each) under a 1,000,000-pixel request budget: they reach
    the model in chunks that each fit the budget, and the results come back in request order."""
    from classifiers.images.stream import embed_images, image_memory_stats

    values = [b64(_encoded((448, 448), color=(i, 0, 0))) for i in range(12)]
    cfg = ImageFetchConfig(max_request_pixels=1_000_000)
    chunks: list[int] = []

    async def embed(images):
        chunks.append(sum(im.size[0] * im.size[1] for im in images))
        return [im.getpixel((0, 0))[0] for im in images]

    async def go():
        rows = await embed_images(values, list(range(12)), cfg, embed, short_side=448)
        return rows, image_memory_stats()

    rows, stats = run(go)
    assert rows == list(range(12))
    assert len(chunks) > 1 and max(chunks) <= 1_000_000 and sum(chunks) == 12 * 448 * 448
    assert stats["held_pixels"] == 0 and stats["decoding_pixels"] == 0


def test_the_replica_budget_is_shared_and_never_deadlocks():
    """Eight concurrent requests of six images each, with a replica budget of about two images: every request
    completes, the replica never held more than its budget, and everything is released at the end."""
    from classifiers.images.stream import embed_images, image_memory_stats, max_image_pixels

    cfg = ImageFetchConfig(max_replica_pixels=2 * max_image_pixels(64), max_request_pixels=10**9, max_concurrency=3)
    requests = [[b64(_encoded((300, 200), color=(r, i, 0))) for i in range(6)] for r in range(8)]

    async def embed(images):
        await asyncio.sleep(0)  # the model call yields, as a real batch does
        return [im.getpixel((0, 0))[:2] for im in images]

    async def go():
        results = await asyncio.wait_for(  # a deadlock would hang here (guard only, not a timing assert)
            asyncio.gather(*(embed_images(v, list(range(6)), cfg, embed, short_side=64) for v in requests)), 120
        )
        return results, image_memory_stats()

    results, stats = run(go)
    assert results == [[(r, i) for i in range(6)] for r in range(8)]
    assert 0 < stats["held_pixels_peak"] <= cfg.max_replica_pixels and stats["held_pixels"] == 0


def test_a_bad_image_after_embedded_chunks_still_names_the_lowest_position_and_frees_everything():
    from classifiers.images.stream import embed_images, image_memory_stats

    values = [b64(_encoded((448, 448), color=(i, 0, 0))) for i in range(6)] + ["###bad###", b64(_png_declaring(9000, 9000))]

    async def embed(images):
        return [0] * len(images)

    async def go():
        with pytest.raises(InvalidImage) as info:
            await embed_images(values, list(range(8)), ImageFetchConfig(max_request_pixels=500_000), embed, short_side=448)
        await asyncio.sleep(0)
        return str(info.value), image_memory_stats()

    msg, stats = run(go)
    assert msg.startswith("input[6]: malformed base64")
    assert stats["held_pixels"] == 0 and stats["decoding_pixels"] == 0


def test_pixel_budget_is_first_come_first_served_and_clamps():
    from classifiers.images.stream import PixelBudget

    async def go():
        budget = PixelBudget(10)
        assert await budget.acquire(50) == 10  # larger than the whole budget: clamped, so it can ever run
        order = []

        async def take(name, n):
            await budget.acquire(n)
            order.append(name)

        big, small = asyncio.ensure_future(take("big", 8)), asyncio.ensure_future(take("small", 1))
        await asyncio.sleep(0)
        assert budget.waiting == 2 and order == []
        budget.release(10)
        await asyncio.gather(big, small)
        cancelled = asyncio.ensure_future(budget.acquire(5))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        return order, budget.used, budget.waiting, budget.peak

    assert run(go) == (["big", "small"], 9, 0, 10)


# ------------------------------------------------------------------------------------------------------------- DNS


def test_dns_lookups_run_in_their_own_bounded_pool_and_time_out():
    """A hanging resolver occupies at most `dns_threads` threads of the fetcher's own pool; every lookup gives up
    after its timeout instead of piling up threads in the default executor."""
    import threading

    from classifiers.images.stream import ImageLoadError, Resolver

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


# ------------------------------------------------------------------------------------ ports, generic fetch errors


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


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"allowed_ports": [0]}, ["0", "1-65535"]),
        ({"allowed_ports": ["http"]}, ["'http'", "1-65535"]),
        ({"allowed_ports": []}, ["empty"]),
        ({"max_short_side": 8}, ["max_short_side"]),
        ({"dns_threads": 0}, ["dns_threads"]),
    ],
)
def test_new_config_fields_are_validated(kwargs, fragments):
    with pytest.raises(ValidationError) as info:
        ImageFetchConfig(**kwargs)
    for f in fragments:
        assert f in str(info.value), str(info.value)
