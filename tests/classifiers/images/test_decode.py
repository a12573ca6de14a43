"""Decoding: base64 and data URIs, header checks before any pixel, downscaling in every mode, EXIF orientation."""
from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from classifiers.images.budget import image_memory_stats
from classifiers.images.config import ImageFetchConfig
from classifiers.images.decode import probe_image
from classifiers.images.stream import load_images
from classifiers.protocol.errors import InvalidImage
from tests.classifiers.images.helpers import b64, encoded, load, refused, run
from tests.image_server import JPEG, PNG, _png, _png_declaring


def test_raw_base64_and_data_uri():
    b64 = base64.b64encode(PNG).decode()
    wrapped = "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))  # MIME line breaks
    urlsafe = base64.urlsafe_b64encode(JPEG).decode().rstrip("=")  # URL-safe alphabet, no padding
    images = load([b64, wrapped, f"data:image/png;base64,{b64}", f"DATA:image/jpeg;charset=x;BASE64,{urlsafe}", urlsafe], ImageFetchConfig())
    assert [im.size for im in images] == [(20, 10), (20, 10), (20, 10), (16, 16), (16, 16)]
    assert all(im.mode == "RGB" for im in images)


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


def test_a_declared_pixel_count_over_the_limit_is_refused_before_decoding():
    async def go():
        with pytest.raises(InvalidImage) as info:
            await load_images([b64(_png_declaring(8000, 6000))], [3], ImageFetchConfig())
        return str(info.value), image_memory_stats()

    msg, stats = run(go)
    assert msg == "input[3]: image is 8000x6000 = 48000000 pixels; the limit is 40000000"
    assert stats["decoding_pixels_peak"] == 0  # not one pixel was decoded


def test_truncated_image():
    msg = refused([base64.b64encode(JPEG[: len(JPEG) // 2]).decode()], ImageFetchConfig())
    assert "corrupt or truncated" in msg


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


def test_large_images_are_downscaled_right_after_decoding():
    """CLIP needs at most its input size: an image is kept with its shorter side at most 2x that (default 448),
    its longer side at most 4x the bound, aspect ratio kept, never enlarged."""
    values = [b64(encoded((4000, 3000))), b64(encoded((3000, 4000), "JPEG")), b64(encoded((8000, 500))), b64(PNG)]
    assert [im.size for im in load(values, ImageFetchConfig())] == [(597, 448), (448, 597), (1792, 112), (20, 10)]
    assert [im.size for im in load(values[:1], ImageFetchConfig(max_short_side=64))] == [(85, 64)]
    (im,) = asyncio.run(load_images(values[:1], [0], ImageFetchConfig(), short_side=224))
    assert im.size == (299, 224) and im.mode == "RGB"


@pytest.mark.parametrize("mode, color", [("RGBA", (255, 0, 0, 0)), ("P", 3), ("LA", (0, 0)), ("1", 1), ("I;16", 65535)])
def test_downscaling_keeps_every_mode_right(mode, color):
    """Palette, bilevel, 16-bit and transparent images are reduced strip by strip in a mode that can be averaged,
    with the same result as small ones: transparent pixels on white, 16-bit white stays white."""
    data = encoded((1800, 1200), "PNG", mode, color)
    (im,) = load([b64(data)], ImageFetchConfig(max_short_side=100))
    assert im.size == (150, 100) and im.mode == "RGB"
    small = load([b64(encoded((3, 2), "PNG", mode, color))], ImageFetchConfig())[0]
    assert im.getpixel((75, 50)) == small.getpixel((1, 1))


def test_exif_orientation_survives_downscaling():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (image,) = load([b64(encoded((4000, 2000), "JPEG", exif=exif))], ImageFetchConfig())
    assert image.size == (448, 896)


def test_a_jpeg_is_never_decoded_at_full_size():
    """JPEG's DCT scaling decodes a 12-megapixel photo at 1/4 size directly: the full-size image never exists."""
    data = encoded((4000, 3000), "JPEG")
    assert probe_image(data, ImageFetchConfig()).decode_pixels == 1000 * 750

    async def go():
        await load_images([b64(data)], [0], ImageFetchConfig())
        return image_memory_stats()

    stats = run(go)
    assert stats["decoding_pixels_peak"] == 1000 * 750 and stats["decoding_pixels"] == 0
