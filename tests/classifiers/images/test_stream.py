"""Streaming a request: de-duplication, its fetch share and pixel budget, the lowest bad position, the token rule."""
from __future__ import annotations

import asyncio
import base64

import pytest

from classifiers.catalog.registry import BUILTIN_MODELS
from classifiers.images.budget import image_memory_stats
from classifiers.images.config import ImageFetchConfig
from classifiers.images.stream import embed_images, image_tokens, load_images
from classifiers.protocol.errors import InvalidImage
from tests.classifiers.images.helpers import b64, encoded, load, not_fetched, run
from tests.image_server import PNG, _png_declaring


def test_identical_inputs_are_loaded_once(server, cfg):
    before = len(server.hits)
    url = server.url("/delay-ok?s=0.01&dedup=1")
    images = load([url, url, url], cfg)
    assert len(images) == 3 and len(server.hits) - before == 1


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


def test_first_bad_position_wins_even_if_a_later_one_fails_first(server, cfg, fetch_log):
    values = [server.url("/img.png"), server.url("/delay-404"), "###bad###", server.url("/img.jpg")]
    assert "HTTP 404" in not_fetched(values, cfg, fetch_log, 11, [10, 11, 12, 13])


def test_identical_bytes_are_decoded_once_whatever_the_string():
    """The same file as base64 with different line breaks, padding or alphabet, and as a data URI: one decode,
    one image (de-duplicated on a hash of the bytes, not on the string)."""
    data = encoded((640, 480), "JPEG")
    raw = b64(data)
    variants = [raw, "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)), raw.rstrip("="),
                base64.urlsafe_b64encode(data).decode(), f"data:image/jpeg;base64,{raw}", " " + raw + "\r\n"]
    chunks: list[int] = []

    async def embed(images):
        chunks.append(len(images))
        return [object() for _ in images]

    rows = run(lambda: embed_images(variants, list(range(6)), ImageFetchConfig(), embed))
    assert chunks == [1] and len({id(r) for r in rows}) == 1
    images = load(variants + [b64(PNG)], ImageFetchConfig())
    assert len({id(im) for im in images}) == 2


def test_a_thousand_whitespace_variants_of_a_40_megapixel_png_decode_once():
    """The issue's attack: an all-white 40 MP PNG is ~100 KB; 1024 copies differing in whitespace used to be
    decoded 1024 times and held at full size (~160 GB). Now: one decode, one 717x448 image."""
    raw = b64(encoded((8000, 5000), "PNG", optimize=True))
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
    values = [b64(encoded((448, 448), color=(i, 0, 0))) for i in range(12)]
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


def test_a_bad_image_after_embedded_chunks_still_names_the_lowest_position_and_frees_everything():
    values = [b64(encoded((448, 448), color=(i, 0, 0))) for i in range(6)] + ["###bad###", b64(_png_declaring(9000, 9000))]

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


def test_image_tokens_rule():
    """Every image of a model costs the same, whatever its size: the rule takes no image at all."""
    spec = next(s for s in BUILTIN_MODELS if s.name == "clip-vit-base-patch32")
    assert image_tokens(spec) == spec.image_tokens == 1000
