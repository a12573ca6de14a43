"""Client bytes to a small upright RGB image, checked from the header first so that no bomb is ever decoded."""
from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Callable
from urllib.parse import unquote

from classifiers.images.config import ImageFetchConfig
from classifiers.images.errors import ImageLoadError

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
    """The file bytes of a ``data:image/<type>;base64,<payload>`` URI, capped at ``max_bytes``."""
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

