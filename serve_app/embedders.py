"""The ingress side of the embedder deployments: the services' ``Embedder`` over their Serve handles."""

from ray.serve.handle import DeploymentHandle

from classifiers.embedding.batch import EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult


class HandleEmbedder:
    """The services' Embedder over the embedder deployments' handles (one per served model)."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self.handles[model].embed.remote(request)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        return await self.handles[model].embed_images.remote(request)
