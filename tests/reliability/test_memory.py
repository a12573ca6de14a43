"""Memory under the worst legal requests: the replicas' peak RSS stays under the bound the docs state.

Images (docs/images.md): an ImageEmbedder replica holds at most ~0.6 GB of image memory with the default config,
whatever the requests. Zero-shot labels (README, Errors): a request's response is bounded (limits.max_response_bytes,
64 MiB) before any model work, so the worst legal label request costs the ingress a bounded amount.
"""
from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from classifiers.request.limits import Limits
from classifiers.zeroshot.scoring import LabelSet
from classifiers.zeroshot.service import check_response_size

pytestmark = pytest.mark.e2e
MiB = 2**20
IMAGE_BOUND = 600 * MiB  # docs/images.md: 4 B x 64 M + 4 B x 40 M + 2.5 x 8 x 8 MB with the defaults
INGRESS_REQUEST_BOUND = 1024 * MiB  # README: what one worst-case zero-shot request may add to an ingress replica


def stats(http) -> dict:
    r = http.get("/v1/stats")
    assert r.status_code == 200, r.text
    return r.json()


def distinct_copies(png: bytes, n: int) -> list[bytes]:
    """`n` PNGs with different bytes and the same pixels (a text chunk before IEND): no de-duplication helps."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return [png[:-12] + chunk(b"tEXt", b"copy\x00" + str(i).encode()) + png[-12:] for i in range(n)]


def test_worst_legal_image_requests_stay_under_the_image_bound(http, reliability):
    buf = io.BytesIO()
    Image.new("RGB", (8000, 5000), (255, 255, 255)).save(buf, "PNG")  # 40 megapixels: the largest legal image
    images = [base64.b64encode(b).decode() for b in distinct_copies(buf.getvalue(), 24)]
    before = stats(http)["embedders"]["tiny-clip"]
    body = {"model": "tiny-clip", "input": [{"image": im} for im in images], "labels": ["white", "black"]}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: http.post("/v1/classify", json=body), range(2)))
    assert [r.status_code for r in results] == [200, 200], [r.text[:200] for r in results]
    after = stats(http)["embedders"]["tiny-clip"]
    added = after["peak_rss_bytes"] - before["rss_bytes"]
    reliability.add("requests sent", 2)
    reliability.rss("ImageEmbedder-tiny-clip", after["peak_rss_bytes"], before["rss_bytes"] + IMAGE_BOUND)
    assert added < IMAGE_BOUND, f"{added / MiB:.0f} MiB over the documented {IMAGE_BOUND / MiB:.0f} MiB"


def test_worst_legal_label_request_stays_under_the_ingress_bound(http, reliability):
    limits = Limits()
    labels = [f"{i:03d} " + "label text " * 23 for i in range(limits.max_labels)]  # 256 labels of 256 characters
    labels = [lab[: limits.max_label_chars] for lab in labels]
    n = 1
    while True:  # the most inputs the response bound allows with these labels
        try:
            check_response_size(n * 2, LabelSet({None: labels}), limits.max_response_bytes)
            n *= 2
        except Exception:
            break
    lo, hi = n, n * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            check_response_size(mid, LabelSet({None: labels}), limits.max_response_bytes)
            lo = mid
        except Exception:
            hi = mid
    before = stats(http)["ingress"]
    r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": [f"input {i}" for i in range(lo)], "labels": labels})
    assert r.status_code == 200, r.text[:300]
    assert len(r.content) <= limits.max_response_bytes
    over = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": [f"input {i}" for i in range(hi)], "labels": labels})
    assert over.status_code == 400 and over.json()["code"] == "INPUT_LIMIT_EXCEEDED"
    after = stats(http)["ingress"]
    added = after["peak_rss_bytes"] - before["rss_bytes"]
    reliability.add("requests sent", 2)
    reliability.rss("Ingress", after["peak_rss_bytes"], before["rss_bytes"] + INGRESS_REQUEST_BOUND)
    print(f"worst label request: {lo} inputs x {len(labels)} labels, response {len(r.content) / MiB:.0f} MiB, "
          f"ingress peak +{added / MiB:.0f} MiB")
    assert added < INGRESS_REQUEST_BOUND, f"{added / MiB:.0f} MiB over {INGRESS_REQUEST_BOUND / MiB:.0f} MiB"
