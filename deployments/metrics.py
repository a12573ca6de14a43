"""Prometheus metrics of the service, through ``ray.serve.metrics`` (exported by Ray's metrics endpoint, with
Serve's own tags: application, deployment, replica). Created inside the replica or actor that records them.

Names are ``ray_classifier_*`` once exported (Ray prefixes ``ray_``). Tag values are bounded sets: routes are the
route templates, models are served model names (anything else is ``unknown``), reasons and codes are enums.
"""
from __future__ import annotations

import collections
import functools
import logging
from typing import cast

logger = logging.getLogger("ray.serve")


def best_effort(method):
    """A metric that cannot be recorded is logged, never raised: metrics must not fail a request that succeeded."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            logger.warning("metric %s not recorded: %s", method.__name__, exc)

    return wrapper


def tag_keys_of(*keys: str) -> tuple[str]:
    """``tag_keys`` for ``ray.serve.metrics``, which annotates them ``Tuple[str]`` (one key) but takes any number."""
    return cast("tuple[str]", keys)


LATENCY_MS: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
BATCH: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
WAIT_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 5000]


class IngressMetrics:
    """What the ingress records: requests, inputs and tokens, refusals, few-shot operations, label cache.

    Counted in memory per request (a dict increment) and handed to Ray's metrics once a second by :meth:`flush`
    (the replica's maintenance loop): a ``Counter.inc`` through Ray costs some 10 µs, and a request made four of them.
    Request latency is Serve's own ``serve_http_request_latency_ms`` (recorded by the replica per route and status),
    not recorded twice."""

    def __init__(self):
        from ray.serve.metrics import Counter

        self.requests = Counter(
            "classifier_requests_total", description="HTTP requests by route, method, status and model.",
            tag_keys=tag_keys_of("route", "method", "status", "model"),
        )
        self.inputs = Counter("classifier_inputs_total", description="Inputs of successful requests.", tag_keys=tag_keys_of("mode", "model"))
        self.tokens = Counter("classifier_tokens_total", description="Tokens charged (usage).", tag_keys=tag_keys_of("mode", "model"))
        self.refusals = Counter(
            "classifier_refusals_total",
            description="Requests refused before any work: rate limits, balance, load shedding, per-client concurrency.",
            tag_keys=("code",),
        )
        self.fewshot = Counter("classifier_fewshot_operations_total", description="Few-shot operations that succeeded.", tag_keys=("op",))
        self.label_cache = Counter("classifier_label_cache_lookups_total", description="Label-cache lookups.", tag_keys=("result",))
        self._cache_seen = (0, 0)
        # pending increments per counter and tag values, flushed by flush()
        self._pending: dict[str, CounterDict] = {name: collections.Counter() for name in _TAGS}

    def http(self, route: str, method: str, status: int, model: str, latency_ms: float) -> None:
        self._pending["requests"][(route, method, str(status), model)] += 1

    def served(self, mode: str, model: str, inputs: int, tokens: int) -> None:
        if inputs > 0:
            self._pending["inputs"][(mode, model)] += inputs
        if tokens > 0:
            self._pending["tokens"][(mode, model)] += tokens

    def refused(self, code: str) -> None:
        self._pending["refusals"][(code,)] += 1

    def op(self, op: str) -> None:
        self._pending["fewshot"][(op,)] += 1

    @best_effort
    def flush(self, cache_hits: int = 0, cache_misses: int = 0) -> None:
        """Hand what was counted since the last flush to Ray's counters (one ``inc`` per counter and tag set), and
        the label cache's running totals as increments."""
        pending, self._pending = self._pending, {name: collections.Counter() for name in _TAGS}
        for name, counts in pending.items():
            metric, keys = getattr(self, name), _TAGS[name]
            for values, n in counts.items():
                if n > 0:  # Ray's Counter.inc refuses 0
                    metric.inc(n, tags=dict(zip(keys, values, strict=True)))
        h0, m0 = self._cache_seen
        if cache_hits > h0:
            self.label_cache.inc(cache_hits - h0, tags={"result": "hit"})
        if cache_misses > m0:
            self.label_cache.inc(cache_misses - m0, tags={"result": "miss"})
        self._cache_seen = (cache_hits, cache_misses)


CounterDict = collections.Counter
_TAGS: dict[str, tuple[str, ...]] = {
    "requests": ("route", "method", "status", "model"), "inputs": ("mode", "model"), "tokens": ("mode", "model"),
    "refusals": ("code",), "fewshot": ("op",),
}


class EmbedderMetrics:
    """What an embedder records: batch sizes (requests and items per model call), queue waits, image fetch failures."""

    def __init__(self, model: str):
        from ray.serve.metrics import Counter, Histogram

        self.model = model
        self.batch_requests = Histogram(
            "classifier_embedder_batch_requests", description="Requests coalesced into one model call.",
            boundaries=BATCH, tag_keys=tag_keys_of("model", "kind"),
        )
        self.batch_items = Histogram(
            "classifier_embedder_batch_items", description="Texts or images in one model call.", boundaries=BATCH,
            tag_keys=tag_keys_of("model", "kind"),
        )
        self.queue_wait = Histogram(
            "classifier_embedder_queue_wait_ms", description="Time a request waited for its batch to start (ms).",
            boundaries=WAIT_MS, tag_keys=("model",),
        )
        self.fetch_failures = Counter(
            "classifier_image_fetch_failures_total", description="Image URLs that could not be fetched, by reason.",
            tag_keys=tag_keys_of("model", "reason"),
        )

    @best_effort
    def batch(self, kind: str, requests: int, items: int) -> None:
        tags = {"model": self.model, "kind": kind}
        self.batch_requests.observe(requests, tags=tags)
        self.batch_items.observe(items, tags=tags)

    @best_effort
    def waited(self, ms: float) -> None:
        self.queue_wait.observe(ms, tags={"model": self.model})

    @best_effort
    def fetch_failed(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.fetch_failures.inc(n, tags={"model": self.model, "reason": reason})


class ShardMetrics:
    """A state shard's classifier count (a plain Ray actor: ray.util.metrics)."""

    def __init__(self, shard: int):
        from ray.util.metrics import Gauge

        self.shard = str(shard)
        self.loaded = Gauge("classifier_classifiers_loaded", description="Classifiers held in memory by a state shard.",
                            tag_keys=("shard",))

    @best_effort
    def set_loaded(self, n: int) -> None:
        self.loaded.set(n, tags={"shard": self.shard})
