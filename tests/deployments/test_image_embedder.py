"""ImageEmbedder's image path, in-process (its class, not a Serve app): real tiny CLIP, real @serve.batch.

The deployment keeps images with their shorter side at most twice the model's input size (read from the loaded
model) and streams a request's images to its batch method in chunks under the pixel budgets."""
from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from classifiers.images.config import ImageFetchConfig
from deployments.config import EmbedderConfig
from tests.clip_fixture import TINY_DIM, TINY_IMAGE_SIZE, make_tiny_clip, tiny_clip_spec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def embedder(tiny_dir, **images):
    from deployments.image_embedder import ImageEmbedder

    cls = ImageEmbedder.func_or_class  # the plain class behind the Serve deployment
    return cls(tiny_clip_spec(tiny_dir), EmbedderConfig(num_threads=1, device="cpu"), ImageFetchConfig(**images))


def b64(size, color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_images_are_kept_at_twice_the_models_input_size(tiny_dir):
    from deployments.image_embedder import model_input_side

    emb = embedder(tiny_dir)
    assert model_input_side(emb.encoder) == TINY_IMAGE_SIZE
    assert emb.short_side == 2 * TINY_IMAGE_SIZE
    assert embedder(tiny_dir, max_short_side=100).short_side == 100


def test_a_large_request_is_embedded_in_chunks_under_its_pixel_budget(tiny_dir):
    """Forty 4000x3000 images (12 MP each, ~1.9 GB at full size together) through the replica's image path (the
    core's embed_images feeding the model step ImageEmbedder._image_batch runs; @serve.batch itself needs a Serve
    replica, so the e2e tests cover it): each image is kept at 85x64, the request never holds more than its
    budget of 20,000 pixels (three images), and the vectors equal embedding each image alone, in request order."""
    from classifiers.embedding.batch import embed_image_batch
    from classifiers.images.budget import image_memory_stats
    from classifiers.images.stream import embed_images

    emb = embedder(tiny_dir, max_request_pixels=20_000)
    values = [b64((4000, 3000), (i * 6, 255 - i * 6, 128)) for i in range(40)]
    chunks: list[list[tuple[int, int]]] = []

    async def model_step(images):  # what ImageEmbedder._image_batch does for a batch of one chunk
        chunks.append([im.size for im in images])
        (vectors,) = await asyncio.to_thread(embed_image_batch, emb.encoder, [images])
        return vectors

    async def go():
        cfg = emb.fetch_config
        whole = await embed_images(values, list(range(40)), cfg, model_step, short_side=emb.short_side)
        alone = [(await embed_images([v], [0], cfg, model_step, short_side=emb.short_side))[0] for v in values[:3]]
        return np.stack(whole), np.stack(alone), image_memory_stats()

    whole, alone, memory = asyncio.run(go())
    assert whole.shape == (40, TINY_DIM) and len({v.tobytes() for v in whole}) == 40
    np.testing.assert_allclose(whole[:3], alone, atol=1e-5)
    sizes = [size for chunk in chunks for size in chunk]
    assert set(sizes) == {(85, 64)} and len(sizes) == 43
    assert max(len(chunk) for chunk in chunks) <= 20_000 // (85 * 64)
    assert memory["held_pixels"] == 0 and memory["decoding_pixels"] == 0
