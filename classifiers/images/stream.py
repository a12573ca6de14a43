"""A request's image strings streamed to the model under the pixel budgets, so that a request never holds them all."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any, Awaitable, Callable, Collection

from classifiers.catalog.registry import ModelSpec
from classifiers.images.budget import PixelBudget, process_share, record_fetch_failure
from classifiers.images.config import ImageFetchConfig
from classifiers.images.decode import (
    DEFAULT_SHORT_SIDE,
    decode_base64,
    decode_data_uri,
    decode_image,
    max_image_pixels,
    probe_image,
)
from classifiers.images.errors import FetchFailed, ImageLoadError, short_url
from classifiers.images.fetch import fetch_url
from classifiers.protocol.errors import InvalidImage

logger = logging.getLogger("ray.serve")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")  # base64 never contains ':', so any match is a scheme


async def load_image_bytes(value: str, config: ImageFetchConfig) -> bytes:
    """The file bytes of one image input string (URL fetched under the deadline, data URI or base64 decoded)."""
    m = _SCHEME.match(value)
    if m is None:
        return decode_base64(value, config.max_bytes)
    scheme = m.group(1).lower()
    if scheme == "data":
        return decode_data_uri(value, config.max_bytes)
    if scheme not in config.allowed_schemes:
        raise ImageLoadError(f"URL scheme {scheme!r} is not allowed; allowed: {', '.join(config.allowed_schemes)}")
    try:
        return await asyncio.wait_for(fetch_url(value, config), timeout=config.timeout_s)
    except asyncio.TimeoutError:
        raise FetchFailed(f"fetching the image took longer than {config.timeout_s:g}s") from None


def _client_detail(position: int, value: str, error: ImageLoadError) -> str:
    """The detail a client gets for a bad image; a failed fetch is only "could not fetch", its reason is logged."""
    if isinstance(error, FetchFailed):
        record_fetch_failure(error.reason)
        logger.info(
            "image input[%d] %s could not be fetched: %s", position, short_url(value.split("?", 1)[0]), error.reason
        )
        return f"input[{position}]: could not fetch image {position}"
    return f"input[{position}]: {error.reason}"


Embed = Callable[[list], Awaitable[Collection]]  # decoded RGB images -> one result per image


class _RequestImages:
    """One :func:`embed_images` call: its loads (one task per distinct string), the decoded images waiting for
    ``embed`` (``ready``), the results so far, and the lowest bad position. All of it lives on one event loop."""

    def __init__(
        self, values: list[str], positions: list[int], config: ImageFetchConfig, embed: Embed, side: int
    ):
        self.values, self.config, self.embed, self.side = values, config, embed, side
        self.reserve = max_image_pixels(side)
        self.shared = process_share(config)
        self.mine = PixelBudget(config.max_request_pixels)
        self.my_fetches = asyncio.Semaphore(min(config.max_fetches_per_request, config.max_concurrency))
        self.loop = asyncio.get_running_loop()
        self.first_pos: dict[str, int] = {}
        for v, p in zip(values, positions, strict=True):
            self.first_pos[v] = min(p, self.first_pos.get(v, p))
        self.digest_of: dict[str, str] = {}  # value -> SHA-256 of its bytes
        self.digest_pos: dict[str, int] = {}  # digest -> lowest position of the values with those bytes (so far)
        self.owners: dict[str, asyncio.Future] = {}  # digest -> outcome of the one load that decodes those bytes
        self.owning: set[str] = set()  # values whose load decodes (never cancelled early: others may wait on it)
        self.rows: dict[str, Any] = {}  # digest -> embed's result
        self.ready: list[tuple[str, Any, int]] = []  # (digest, image, pixels held in both budgets)
        self.wake = asyncio.Event()  # set whenever a load ends, an image is ready, or someone waits for pixels
        self.tasks: dict[asyncio.Future, str] = {}  # load task -> its value
        self.pending: set[asyncio.Future] = set()  # load tasks not yet seen to end
        self.failed: tuple[int, str, ImageLoadError] | None = None  # (position, value, error) of the lowest bad one

    async def run(self) -> list:
        """Start one load per distinct string, drive them to the end, and return ``embed``'s results in the
        order of ``values`` (or raise :class:`InvalidImage` for the lowest bad position). Whatever happens,
        every pixel held is given back and every load still running is cancelled."""
        self.mine.listeners.add(self.wake)
        self.shared.held.listeners.add(self.wake)
        self.tasks = {asyncio.ensure_future(self._load(v)): v for v in self.first_pos}
        self.pending = set(self.tasks)
        try:
            await self._drive()
        finally:
            self.mine.listeners.discard(self.wake)
            self.shared.held.listeners.discard(self.wake)
            for task in self.pending:
                task.cancel()
            self._drop_ready()
        if self.failed is not None:
            raise InvalidImage(_client_detail(*self.failed))
        return [self.rows[self.digest_of[v]] for v in self.values]

    async def _drive(self) -> None:
        """Wait for loads to end, handing ready images to ``embed`` when the loads are done or when a load (of this
        request or any other) waits for pixels; after a failure, until the lowest bad position is certain."""
        while True:
            self.wake.clear()
            self._collect_ended()
            if self.failed is not None:
                self._drop_ready()  # the request fails: its decoded images are not needed any more
                if self._cancel_after_failure(self.failed[0]):
                    return
            elif not self.pending and not self.ready:
                return
            elif self.ready and (not self.pending or self.mine.waiting or self.shared.held.waiting):
                await self._flush()
                continue
            await self.wake.wait()

    def _collect_ended(self) -> None:
        """Take ended loads out of ``pending``, keeping the lowest-position image failure; any other exception of
        a load is raised."""
        for task in [t for t in self.pending if t.done()]:
            self.pending.discard(task)
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                continue
            if not isinstance(exc, ImageLoadError):
                raise exc
            value = self.tasks[task]
            if self.failed is None or self.first_pos[value] < self.failed[0]:
                self.failed = (self.first_pos[value], value, exc)

    def _cancel_after_failure(self, failed_pos: int) -> bool:
        """Cancel the loads at positions after ``failed_pos`` (except those decoding bytes others wait on);
        True once no load at or before it is left, so the failure there is the lowest."""
        later = [t for t in self.pending if self._position(self.tasks[t]) > failed_pos]
        for task in [t for t in later if self.tasks[t] not in self.owning]:
            task.cancel()
            self.pending.discard(task)
        return not any(self._position(self.tasks[t]) <= failed_pos for t in self.pending)

    def _position(self, value: str) -> int:
        """The lowest request position of ``value``, or of any value with the same bytes once they are known."""
        digest = self.digest_of.get(value)
        return self.first_pos[value] if digest is None else self.digest_pos[digest]

    def _give_back(self, n: int) -> None:
        if n:
            self.mine.release(n)
            self.shared.held.release(n)

    def _drop_ready(self) -> None:
        for _, _, n in self.ready:
            self._give_back(n)
        self.ready.clear()

    async def _reserve(self) -> int:
        """Take the most pixels one image can keep from the request's budget, then from the replica's."""
        held = await self.mine.acquire(self.reserve)
        try:
            await self.shared.held.acquire(held)
        except BaseException:
            self.mine.release(held)
            raise
        return held

    async def _load(self, value: str) -> None:
        """Reserve, fetch, and decode one distinct string, or, if another load already decodes the same bytes,
        give the reservation back and wait for that load's outcome."""
        held = 0
        try:
            held = await self._reserve()
            async with self.my_fetches, self.shared.fetches:  # the file bytes live only inside this block
                data = await load_image_bytes(value.strip(), self.config)
                digest = hashlib.sha256(data).hexdigest()
                self.digest_of[value] = digest
                self.digest_pos[digest] = min(self.first_pos[value], self.digest_pos.get(digest, self.first_pos[value]))
                outcome = self.owners.get(digest)
                if outcome is None:
                    await self._decode(value, data, digest, held)
                    held = 0  # handed to ``ready`` with the image
                    return
            self._give_back(held)  # the same bytes are decoded by another load: hold nothing, take its outcome
            held = 0
            await asyncio.shield(outcome)
        finally:
            self._give_back(held)
            self.wake.set()

    async def _decode(self, value: str, data: bytes, digest: str, held: int) -> None:
        """Decode as the owner of ``digest`` and queue the image in ``ready`` with the ``held`` pixels it keeps
        (the rest are given back); loads of the same bytes wait on ``owners[digest]``."""
        outcome = self.owners[digest] = self.loop.create_future()
        self.owning.add(value)
        try:
            probe = await asyncio.to_thread(probe_image, data, self.config, self.side)
            taken = await self.shared.decoding.acquire(probe.decode_pixels)
            try:
                image = await asyncio.to_thread(decode_image, data, self.config, self.side, probe)
            finally:
                self.shared.decoding.release(taken)
        except BaseException as e:
            if isinstance(e, ImageLoadError):
                outcome.set_exception(e)
                outcome.exception()  # retrieved: a failure nobody else waits for is not "never retrieved"
            else:
                outcome.cancel()
            raise
        keep = min(held, image.size[0] * image.size[1])
        self._give_back(held - keep)  # the reservation was for the largest possible image
        self.ready.append((digest, image, keep))
        outcome.set_result(None)
        self.wake.set()

    async def _flush(self) -> None:
        """Hand every ready image to ``embed`` in one call; their pixels are given back whatever happens."""
        batch = self.ready[:]
        self.ready.clear()
        try:
            out = await self.embed([image for _, image, _ in batch])
            if len(out) != len(batch):
                raise RuntimeError(f"embed returned {len(out)} results for {len(batch)} images")
            for (digest, _, _), row in zip(batch, out, strict=True):
                self.rows[digest] = row
        finally:
            for _, _, n in batch:
                self._give_back(n)


async def embed_images(
    values: list[str], positions: list[int], config: ImageFetchConfig, embed: Embed, *,
    short_side: int | None = None,
) -> list:
    """Load image inputs and pass the decoded images to ``embed`` in chunks, never holding more decoded pixels than
    the request's budget (``max_request_pixels``) and the replica's (``max_replica_pixels``); returns ``embed``'s
    per-image results in the order of ``values``.

    ``positions[i]`` is the request position of ``values[i]`` (for error details). Each image is decoded and
    downscaled at once (:func:`~classifiers.images.decode.decode_image`, shorter side at most ``short_side``;
    default ``max_short_side`` or 448), so what waits for the model is small. Identical strings are fetched once, and identical file bytes
    (e.g. the same base64 with different line breaks) are decoded and embedded once: they are keyed by a SHA-256
    of the bytes. ``embed`` gets a list of RGB images and returns one result per image (e.g. a vector each).

    Before fetching, a load reserves the most pixels one image can keep (``4 * short_side**2``) from both budgets
    and gives back the difference once the header says the real size; decoded images wait in a queue that is
    handed to ``embed`` whenever a load of this request, or of any request of the replica, waits for room, and
    when the loads are done. So each budget always drains, and no request can block another forever. If any image
    is bad, raises :class:`InvalidImage` ``"input[<pos>]: <reason>"`` for the lowest bad position (loads at later
    positions are cancelled as soon as that is certain, and no more chunks are embedded).
    """
    if len(values) != len(positions):
        raise ValueError(f"{len(values)} values but {len(positions)} positions")
    if not values:
        return []
    side = short_side or config.max_short_side or DEFAULT_SHORT_SIDE
    return await _RequestImages(values, positions, config, embed, side).run()


async def load_images(
    values: list[str], positions: list[int], config: ImageFetchConfig, *, short_side: int | None = None
) -> list:
    """Load image inputs into RGB ``PIL.Image.Image`` objects (downscaled), in the order of ``values``; identical
    inputs give the same object. The caller holds every image: for tools and tests. The service streams images to
    the model under the pixel budgets instead (:func:`embed_images`)."""

    async def keep(images: list) -> list:
        return images

    return await embed_images(values, positions, config, keep, short_side=short_side)


def image_tokens(spec: ModelSpec) -> int:
    """Tokens charged for one image: ``spec.image_tokens``, the same for every image (see docs/images.md).

    The models served here look at one fixed-resolution view of every image (CLIP resizes the short side and
    centre-crops to its input size), so the work per image does not depend on the size that was sent.
    """
    return int(spec.image_tokens)
