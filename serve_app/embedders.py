"""The ingress side of the embedder deployments: the services' ``Embedder`` over their Serve handles."""

from ray.serve.handle import DeploymentHandle

from classifiers.embedding.requests import CountRequest, EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.embedding.tokens import TextCount

# What crosses the handle is plain importable dataclasses and numpy arrays (classifiers/embedding/batch.py): the
# standard pickle serialises them as well as Ray Serve's default, cloudpickle, at half the CPU (measured: a one-input
# call's request and result, dumped and loaded, 29 us -> 13 us, on every request). It applies where Serve serialises
# a call itself (its gRPC transport, RAY_SERVE_THROUGHPUT_OPTIMIZED); Ray's own actor calls ignore it.
SERIALIZATION = "pickle"


class HandleEmbedder:
    """The services' Embedder over the embedder deployments' handles (one per served model)."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles
        # One handle per (model, method), made on first use: `handle.embed` is `handle.options(method_name=...)`,
        # a new handle object on every call otherwise.
        self._methods: dict[tuple[str, str], DeploymentHandle] = {}

    def method(self, model: str, name: str) -> DeploymentHandle:
        handle = self._methods.get((model, name))
        if handle is None:
            handle = self._methods[(model, name)] = self.handles[model].options(
                method_name=name, request_serialization=SERIALIZATION, response_serialization=SERIALIZATION
            )
        return handle

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self.method(model, "embed").remote(request)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        return await self.method(model, "embed_images").remote(request)

    async def count(self, model: str, request: CountRequest) -> TextCount:
        return await self.method(model, "count").remote(request)
