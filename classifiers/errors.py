"""Typed errors of the classification core.

The core raises these; only the HTTP ingress maps them to status codes and Jina's error body
(``{"code", "detail", "request_id"}``). Python callers of a DeploymentHandle receive them as-is
(wrapped by Ray as the ``cause`` of a ``RayTaskError``) and can branch on ``code``.
"""
from __future__ import annotations


class ServiceError(Exception):
    """Base class: a Jina error ``code``, an HTTP ``status`` and a human-readable ``detail``."""

    code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __reduce__(self):  # keep code/status when Ray pickles the error across processes
        return (_rebuild, (type(self), self.detail, self.code, self.status))

    def to_body(self, request_id: str) -> dict:
        return {"code": self.code, "detail": self.detail, "request_id": request_id}


def _rebuild(cls, detail, code, status):
    return cls(detail, code=code, status=status)


class InvalidInput(ServiceError):
    """The request is well-formed JSON of the right shape but its content is unusable."""

    code = "INPUT_INVALID"
    status = 400


class ModelNotFound(InvalidInput):
    code = "INPUT_MODEL_NOT_FOUND"


class InvalidLabels(InvalidInput):
    code = "INPUT_INVALID_LABELS"


class LabelLimitExceeded(InvalidInput):
    code = "INPUT_LABEL_LIMIT_EXCEEDED"


class InputLimitExceeded(InvalidInput):
    code = "INPUT_LIMIT_EXCEEDED"


class InputTooLong(InvalidInput):
    code = "INPUT_TOO_LONG"


class UnsupportedModality(InvalidInput):
    code = "INPUT_UNSUPPORTED_MODALITY"


class InvalidImage(InvalidInput):
    code = "INPUT_INVALID_IMAGE"


class ResourceNotFound(ServiceError):
    code = "RESOURCE_NOT_FOUND"
    status = 404


class ResourceLimitExceeded(ServiceError):
    code = "AUTHZ_RESOURCE_LIMIT_EXCEEDED"
    status = 403
