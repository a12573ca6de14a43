"""The `clip` backend, end to end through the real loading code, on a tiny random CLIP built offline."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from classifiers.embedding.batch import embed_image_batch
from classifiers.embedding.engines import load_encoder
from classifiers.embedding.engines.base import CPU_MAX_BATCH_TOKENS
from classifiers.embedding.engines.clip_engine import CLIPEncoder, open_clip_name
from classifiers.embedding.turns import BatchStats
from tests.clip_fixture import TINY_DIM, make_tiny_clip, tiny_clip_spec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return load_encoder(tiny_clip_spec(tiny_dir), num_threads=1, device="cpu")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 60), (32, 32), (90, 45)]]
    out.append(Image.new("L", (50, 50), 128))  # grey: converted to RGB by the encoder
    out.append(Image.new("RGBA", (20, 70), (255, 0, 0, 128)))
    return out


def test_loads_through_load_encoder_from_a_local_dir(encoder):
    assert isinstance(encoder, CLIPEncoder)
    assert encoder.dim == TINY_DIM
    assert encoder.window == 77
    assert type(encoder.processor).__name__ in ("CLIPImageProcessorPil", "CLIPImageProcessor")
    assert "Fast" not in type(encoder.processor).__name__


def test_text_and_image_vectors_share_dim_and_are_unit_norm(encoder):
    texts = encoder.encode(["a photo of a cat", "a dog", "x"], "input")
    images = encoder.encode_images(_images())
    assert texts.dtype == np.float32 and images.dtype == np.float32
    assert texts.shape == (3, TINY_DIM) and images.shape == (5, TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(texts)) and np.all(np.isfinite(images))
    assert not np.allclose(texts[0], texts[1]) and not np.allclose(images[0], images[1])


def test_deterministic_across_loads(tiny_dir, encoder):
    again = load_encoder(tiny_clip_spec(tiny_dir), num_threads=1, device="cpu")
    np.testing.assert_array_equal(encoder.encode(["same text"], "label"), again.encode(["same text"], "label"))
    imgs = _images()[:2]
    np.testing.assert_array_equal(encoder.encode_images(imgs), again.encode_images(imgs))


def test_batch_equals_single(encoder):
    texts = ["short", "a somewhat longer sentence about a cat on a mat", "mid length text here"]
    batch = encoder.encode(texts, "input")
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], encoder.encode([t], "input")[0], atol=1e-5)
    images = _images()
    encoder.image_batch_size = 2  # several sub-batches
    try:
        many = encoder.encode_images(images)
    finally:
        encoder.image_batch_size = 16
    for i, im in enumerate(images):
        np.testing.assert_allclose(many[i], encoder.encode_images([im])[0], atol=1e-5)


def test_token_counts_and_chunk_pooling_of_long_text(encoder):
    assert encoder.count_tokens(["hello world"], "input") == [4]  # [CLS] hello world [SEP]
    long = " ".join(["word"] * 200)  # 200 content tokens: windows of 75 -> 3 windows, 2 specials each
    assert encoder.count_tokens([long], "input") == [200 + 3 * 2]
    vec = encoder.encode([long], "input")
    assert vec.shape == (1, TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    # a special token typed into the text is not allowed to move CLIP's end-of-text pooling
    np.testing.assert_allclose(encoder.encode(["a [SEP] b"], "input"), encoder.encode(["a b"], "input"), atol=1e-6)


def test_text_sub_batches_keep_to_the_token_budget(encoder):
    texts = ["short", "a somewhat longer sentence about a cat on a mat", " ".join(["word"] * 200), "mid length"]
    whole, before = encoder.encode(texts, "input"), encoder.max_batch_tokens
    assert before == CPU_MAX_BATCH_TOKENS  # the engine's default on CPU
    encoder.set_max_batch_tokens(40)
    try:
        cut = encoder.encode(texts, "input")
        plan = encoder.last_batches
    finally:
        encoder.set_max_batch_tokens(before)
    assert sum(rows for rows, _ in plan) == 6  # 3 short texts + 3 windows of the long one
    assert all(rows * length <= 40 or rows == 1 for rows, length in plan)
    assert [length for _, length in plan] == sorted(length for _, length in plan)
    np.testing.assert_allclose(cut, whole, atol=1e-5)


def test_empty_inputs(encoder):
    assert encoder.encode([], "input").shape == (0, TINY_DIM)
    assert encoder.encode_images([]).shape == (0, TINY_DIM)


def test_embed_image_batch_splits_per_request(encoder):
    imgs = _images()
    parts = embed_image_batch(encoder, [imgs[:2], [], imgs[2:]])
    assert [p.shape[0] for p in parts] == [2, 0, 3]
    np.testing.assert_allclose(np.vstack([parts[0], parts[2]]), encoder.encode_images(imgs), atol=1e-5)
    stats = BatchStats("images")
    stats.record([2, 3])
    assert stats.snapshot()["images"] == 5 and stats.snapshot()["requests"] == 2


def test_registry_dim_mismatch_is_a_clear_error(tiny_dir):
    with pytest.raises(ValueError, match="dim=999"):
        load_encoder(tiny_clip_spec(tiny_dir, dim=999), num_threads=1, device="cpu")


def test_open_clip_source_forms(tmp_path):
    assert open_clip_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == (
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None
    )
    assert open_clip_name("ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert open_clip_name(str(tmp_path)) == (f"local-dir:{tmp_path}", None)
    with pytest.raises(ValueError, match="hf-hub"):
        open_clip_name("ViT-B-32")


def test_open_clip_missing_is_a_clear_error():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("open_clip is installed in this environment")
    spec = tiny_clip_spec("ViT-B-32:laion2b_s34b_b79k", backend="open_clip", dim=512)
    with pytest.raises(ImportError, match="open_clip_torch"):
        load_encoder(spec)
