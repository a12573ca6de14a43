"""Loading images the way a request does and reading what the client was told, shared by the image tests."""
from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from classifiers.images.stream import load_images
from classifiers.protocol.errors import InvalidImage


def load(values, cfg, positions=None):
    positions = list(range(len(values))) if positions is None else positions
    return asyncio.run(load_images(values, positions, cfg))


def refused(values, cfg, positions=None) -> str:
    with pytest.raises(InvalidImage) as info:
        load(values, cfg, positions)
    assert info.value.code == "INPUT_INVALID_IMAGE" and info.value.status == 400
    return str(info.value)


def not_fetched(values, cfg, log: list[str], pos: int, positions=None) -> str:
    """The client gets only the generic detail for a failed fetch; returns the reason the server logged."""
    msg = refused(values, cfg, positions)
    assert msg == f"input[{pos}]: could not fetch image {pos}", msg
    assert log and f"input[{pos}]" in log[-1], log
    return log[-1]


def encoded(size, fmt="PNG", mode="RGB", color=(250, 250, 250), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro_fn):
    """Run ``coro_fn()`` in a fresh event loop (fresh per-process budgets) and return its result."""
    return asyncio.run(coro_fn())
