"""Image failures, split so that a client hears what it sent wrong but never what the network answered."""
from __future__ import annotations

MAX_REASON_URL = 120  # characters of a URL echoed back in an error message


class ImageLoadError(Exception):
    """One image could not be used; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FetchFailed(ImageLoadError):
    """A URL could not be fetched. The client is told only "could not fetch image N": whether DNS, the address
    check, the connection, TLS, the HTTP status or the body failed would let a client map hosts and ports through
    the service. ``reason`` (the real one) goes to the server log."""


def short_url(url: str) -> str:
    """``url`` cut to ``MAX_REASON_URL`` characters, for error messages and logs."""
    return url if len(url) <= MAX_REASON_URL else url[: MAX_REASON_URL - 3] + "..."
