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


class RequestValidationFailed(ServiceError):
    """A schema rule whose bound is configuration (e.g. /train's item cap), so pydantic cannot check it.

    Answers like pydantic's own schema errors: 422 ``INPUT_VALIDATION_FAILED`` with an ``errors`` list."""

    code = "INPUT_VALIDATION_FAILED"
    status = 422

    def __init__(self, detail: str, *, errors: list[dict] | None = None, code: str | None = None, status: int | None = None):
        super().__init__(detail, code=code, status=status)
        self.errors = list(errors or [])

    def __reduce__(self):
        return (_rebuild_validation, (self.detail, self.errors))


def _rebuild_validation(detail, errors):
    return RequestValidationFailed(detail, errors=errors)


class ResourceNotFound(ServiceError):
    code = "RESOURCE_NOT_FOUND"
    status = 404


def classifier_not_found(cid: str) -> ResourceNotFound:
    """The one answer for a classifier that is missing or not the caller's: existence is never revealed."""
    return ResourceNotFound(f"Classifier {cid[:80]!r} not found or access denied. Verify the ID and your permissions.")


class ResourceLimitExceeded(ServiceError):
    code = "AUTHZ_RESOURCE_LIMIT_EXCEEDED"
    status = 403


class IdempotencyKeyInUse(ServiceError):
    """A request with this Idempotency-Key is still being applied: this one did nothing. Retrying shortly gets the
    first request's answer (or IdempotencyKeyReused, if the bodies differ). Jina's code for a resource being
    modified, so Jina clients that retry it already do the right thing."""

    code = "CONFLICT_RESOURCE_BUSY"
    status = 409


class IdempotencyKeyReused(ServiceError):
    """This Idempotency-Key was first used with a different request (another body, or another operation):
    refused, nothing applied. Replaying the first answer would tell the client its new request succeeded when it
    was never applied (IETF draft-ietf-httpapi-idempotency-key-header: 422 for a reused key)."""

    code = "INPUT_IDEMPOTENCY_KEY_REUSED"
    status = 422


class ServiceUnavailable(ServiceError):
    """A transient condition (a replica or state shard restarting, a store unreachable): retry later."""

    code = "SERVICE_UNAVAILABLE"
    status = 503


class ServiceTimeout(ServiceError):
    """The request did not finish within the ingress's request timeout."""

    code = "SERVICE_TIMEOUT"
    status = 504


class StaleWriter(ServiceUnavailable):
    """This shard set no longer owns the store (a newer deploy claimed it): the retry reaches the current one."""


# -- accounts: authentication, authorisation, rate limits (codes from Jina's API) ------------------------------
class AuthError(ServiceError):
    status = 401


class MissingApiKey(AuthError):
    code = "AUTH_MISSING_API_KEY"


class InvalidApiKey(AuthError):
    code = "AUTH_INVALID_API_KEY"


class InvalidAuthFormat(AuthError):
    code = "AUTH_INVALID_FORMAT"


class LocalClientsOnly(AuthError):
    """Anonymous mode on a loopback host answers clients on this machine only. Ray Serve may also listen on other
    interfaces (its HAProxy mode binds the replicas' HTTP ports on all of them); without keys, those would
    otherwise be an open door."""

    code = "AUTHZ_INSUFFICIENT_PERMISSIONS"
    status = 403


class AdminRequired(ServiceError):
    """An admin route (``/v1/stats``) called with a valid key that is not an admin key."""

    code = "AUTHZ_INSUFFICIENT_PERMISSIONS"
    status = 403


class InsufficientBalance(ServiceError):
    code = "AUTHZ_INSUFFICIENT_BALANCE"
    status = 403


class RateLimited(ServiceError):
    """Over a requests- or tokens-per-minute limit; ``retry_after_s`` is when enough budget will have refilled."""

    status = 429
    code = "RATE_REQUEST_LIMIT_EXCEEDED"

    def __init__(self, detail: str, *, retry_after_s: float = 1.0, code: str | None = None, status: int | None = None):
        super().__init__(detail, code=code, status=status)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild_rate_limited, (self.detail, self.code, self.retry_after_s))


def _rebuild_rate_limited(detail, code, retry_after_s):
    return RateLimited(detail, code=code, retry_after_s=retry_after_s)


REQUEST_LIMIT = "RATE_REQUEST_LIMIT_EXCEEDED"
TOKEN_LIMIT = "RATE_TOKEN_LIMIT_EXCEEDED"
