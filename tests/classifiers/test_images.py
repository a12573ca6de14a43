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
import ssl
import time

import pytest
from PIL import Image
from pydantic import ValidationError

from classifiers.errors import InvalidImage
from classifiers.images import ImageFetchConfig, address_problem, image_tokens, load_images
from classifiers.registry import BUILTIN_MODELS
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


def test_image_tokens_rule():
    spec = next(s for s in BUILTIN_MODELS if s.name == "clip-vit-base-patch32")
    small, large = Image.new("RGB", (10, 10)), Image.new("RGB", (4000, 3000))
    assert image_tokens(small, spec) == image_tokens(large, spec) == spec.image_tokens == 1000


# ----------------------------------------------------------------------------------------------------- refusals


def test_loopback_url_is_refused_without_the_allowlist(server):
    msg = refused(["data:image/png;base64," + base64.b64encode(PNG).decode(), server.url("/img.png")], ImageFetchConfig(), [3, 4])
    assert msg.startswith("input[4]:") and "loopback" in msg
    msg = refused([server.url("/img.png", host="localhost")], ImageFetchConfig())
    assert "input[0]" in msg and "loopback" in msg


def test_allowlist_port_must_match(server):
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port + 1 if server.port < 65535 else 1}"])
    assert "loopback" in refused([server.url("/img.png")], cfg)


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://127.0.0.1:{other}/img.png", "loopback"),
        ("http://localhost:{other}/img.png", "loopback"),
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
def test_redirect_to_a_forbidden_target_is_refused(server, other_server, cfg, target, reason):
    before = len(other_server.hits)
    location = target.format(other=other_server.port)
    msg = refused([server.url("/img.png"), server.url(f"/redirect?to={location}")], cfg, [0, 1])
    assert msg.startswith("input[1]:") and reason in msg, msg
    assert len(other_server.hits) == before  # never contacted


def test_too_many_redirects(server, cfg):
    msg = refused([server.url("/loop/0")], cfg, [2])
    assert msg.startswith("input[2]:") and "more than 3 redirects" in msg
    no_redirects = cfg.model_copy(update={"max_redirects": 0})
    assert "more than 0 redirects" in refused([server.url("/redirect?to=/img.png")], no_redirects)


def test_oversize_by_content_length(server, cfg):
    msg = refused([server.url("/big")], cfg, [5])
    assert msg.startswith("input[5]:") and "Content-Length" in msg and str(8 * 1024 * 1024) in msg


def test_oversize_streamed_without_content_length(server, cfg):
    small = cfg.model_copy(update={"max_bytes": 100_000})
    msg = refused([server.url("/big-stream")], small)
    assert "larger than the limit of 100000 bytes" in msg


def test_gzip_bomb_is_capped_while_decompressing(server, cfg):
    small = cfg.model_copy(update={"max_bytes": 1024 * 1024})
    assert "larger than the limit" in refused([server.url("/gzip-bomb")], small)


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


def test_http_error_status(server, cfg):
    assert "HTTP 404" in refused([server.url("/status/404")], cfg)


def test_timeout_on_a_slow_server(server, cfg):
    fast = cfg.model_copy(update={"timeout_s": 0.5})
    started = time.perf_counter()
    msg = refused([server.url("/slow")], fast, [9])
    assert msg.startswith("input[9]:") and "longer than 0.5s" in msg
    assert time.perf_counter() - started < 1.5


def test_first_bad_position_wins_even_if_a_later_one_fails_first(server, cfg):
    values = [server.url("/img.png"), server.url("/delay-404"), "###bad###", server.url("/img.jpg")]
    msg = refused(values, cfg, [10, 11, 12, 13])
    assert msg.startswith("input[11]:") and "HTTP 404" in msg


def test_unresolvable_host(cfg):
    msg = refused(["http://no-such-host.invalid/img.png"], cfg.model_copy(update={"timeout_s": 3}))
    assert "resolve" in msg or "longer than" in msg


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


def test_https_certificate_is_verified(tls_server):
    # Reached by IP, the certificate (for 'localhost') does not match: refused, not silently accepted.
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{tls_server.port}"], ca_bundle=tls_server.ca, timeout_s=5)
    assert "TLS" in refused([tls_server.url("/img.png", scheme="https")], cfg)
    # And with the default trust store, the throwaway CA is unknown.
    default = ImageFetchConfig(allow_hosts=[f"localhost:{tls_server.port}"], timeout_s=5)
    assert "TLS" in refused([tls_server.url("/img.png", host="localhost", scheme="https")], default)


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


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"])
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
