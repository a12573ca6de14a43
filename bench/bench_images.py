"""Image throughput at saturation over HTTP vs raw in-process batched image encoding, as a ratio.

No package ships real CLIP weights, so the model is CLIP ViT-B/32 *architecture* with random weights (same
compute as openai/clip-vit-base-patch32), saved to disk and loaded through the real `clip` backend. Images
are the shared flower photos (JPEG, ~160-500 px), sent base64-encoded (decoded and resized in the
ImageEmbedder, outside the model's batch loop).

  raw   = images/s of encoder.encode_images on already-decoded images, best over batch sizes;
  http  = images/s through proxy -> Ingress -> ImageEmbedder (fetch/decode + @serve.batch);
  ratio = http / raw.

    PYTHONPATH=. .venv/bin/python bench/bench_images.py [--n 96]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, load, saturate, start_app, stop_app

FLOWERS = ROOT.parent / "shared" / "data" / "images"


def main() -> None:
    from PIL import Image

    from classifiers.embedding.engines import load_encoder
    from tests.clip_fixture import make_tiny_clip, tiny_clip_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="images per measurement")
    ap.add_argument("--request-sizes", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    paths = sorted(FLOWERS.glob("*/*.jpg"))
    blobs = [paths[i % len(paths)].read_bytes() for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = tiny_clip_spec(make_tiny_clip(Path(tmp) / "clip-b32", size="base"), name="clip-b32-random", dim=512)
        enc = load_encoder(spec)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
        enc.encode_images(images[:8])
        best = (0.0, 0)
        for bs in (8, 16, 32):
            t0 = time.perf_counter()
            for i in range(0, len(images), bs):
                enc.encode_images(images[i : i + bs])
            rate = len(images) / (time.perf_counter() - t0)
            print(f"  raw batch={bs:3d}: {rate:6.1f} images/s")
            best = max(best, (rate, bs))
        del enc
        url = start_app([spec.name], extra_models=[spec.model_dump()])
        rows = []
        try:
            labels = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
            b64 = [base64.b64encode(b).decode() for b in blobs]
            asyncio.run(saturate(url, "/v1/classify", [{"model": spec.name, "input": [{"image": b64[0]}], "labels": labels}], 1))
            for size in args.request_sizes:
                payloads = [{"model": spec.name, "input": [{"image": x} for x in b64[i : i + size]], "labels": labels}
                            for i in range(0, len(b64), size)]
                conc = max(4, 32 // size)
                rate, failed, client = load(url, "/v1/classify", payloads, conc, seconds=30)
                rate *= size
                rows.append((size, conc, rate, failed))
                print(f"  http ({client}) images/request={size}: {rate:6.1f} images/s, ratio {rate / best[0]:.2f}")
        finally:
            stop_app()
    print("\n| raw images/s (best batch) | images/request | concurrency | HTTP images/s | ratio |")
    print("|---|---|---|---|---|")
    for size, conc, rate, failed in rows:
        print(f"| {best[0]:.1f} ({best[1]}) | {size} | {conc} | {rate:.1f}{f' ({failed} failed)' if failed else ''} | {rate / best[0]:.2f} |")


if __name__ == "__main__":
    main()
