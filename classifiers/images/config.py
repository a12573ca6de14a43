"""The operator's knobs for image inputs, validated once at startup so that no request meets a bad setting."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from classifiers.images.allowlist import parse_allow_entry

SUPPORTED_SCHEMES = ("http", "https")
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def _pil_formats() -> set[str]:
    from PIL import Image

    Image.init()
    return set(Image.OPEN)


class ImageFetchConfig(BaseModel):
    """How image inputs are fetched and decoded (one per embedder deployment of a multimodal model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_schemes: tuple[str, ...] = Field(
        default=SUPPORTED_SCHEMES,
        description="URL schemes that may be fetched; a subset of http, https. `data:` URIs and raw base64 are "
        "always accepted (they need no fetching).",
    )
    allow_hosts: tuple[str, ...] = Field(
        default=(),
        description="Operator allowlist exempt from the public-address check: hostnames (`images.internal`), IP "
        "addresses (`10.1.2.3`, `::1`), or networks (`10.0.0.0/8`), each optionally with a port "
        "(`minio.internal:9000`, `127.0.0.1:8080`, `[::1]:8080`). A hostname matches the URL's host; an IP or "
        "network matches the resolved address. The connection is still pinned to the resolved address.",
    )
    max_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest image file accepted, in bytes (Jina: 8 MB); applies to "
        "downloads, data URIs and base64 alike."
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Total time for fetching one URL: DNS, connects, every redirect and "
        "the whole body."
    )
    max_pixels: int = Field(
        default=40_000_000, gt=0, le=178_956_970,
        description="Largest width*height accepted, checked from the image header before any pixel is decoded "
        "(decompression bombs); at most 2x PIL's own bomb limit. Larger images are refused, smaller ones are "
        "decoded and downscaled at once (`max_short_side`).",
    )
    max_short_side: int | None = Field(
        default=None, ge=16, le=8192,
        description="Decoded images are downscaled right after decoding, aspect ratio kept, so that the shorter side "
        "is at most this many pixels and the longer side at most 4x this (extreme panoramas shrink further). None: "
        "twice the model's input size, which the ImageEmbedder reads from the loaded model (448 for the 224-pixel "
        "CLIPs, 1024 for jina-clip-v2), and 448 where no model is known. CLIP-style models resize the shorter side to "
        "their input size anyway, so more pixels only cost memory. JPEGs are decoded at reduced size directly (no "
        "full-size copy is ever made).",
    )
    max_request_pixels: int = Field(
        default=16_000_000, ge=1,
        description="Decoded (downscaled) pixels one request may hold at a time, identical images counted once: a "
        "request with more streams its images to the model in chunks under this budget instead of holding them all. "
        "Pillow keeps RGB as 4 bytes per pixel, so 64 MB by default.",
    )
    max_replica_pixels: int = Field(
        default=64_000_000, ge=1,
        description="Decoded (downscaled) pixels all requests of one replica process may hold at a time; loads wait "
        "for room (first come, first served). 4 bytes per pixel: 256 MB by default. With `max_decoding_pixels` it "
        "bounds the image memory of an ImageEmbedder replica (docs/images.md, Memory).",
    )
    max_decoding_pixels: int = Field(
        default=40_000_000, ge=1,
        description="Full-resolution pixels being decoded at once per replica process, before downscaling (a PNG "
        "must be decoded whole; a JPEG only at its reduced size). 4 bytes per pixel (the decoded image is the only "
        "full-size buffer: it is reduced strip by strip), so 160 MB by default. One image larger than this still "
        "decodes, alone.",
    )
    max_redirects: int = Field(default=3, ge=0, le=20, description="Redirect hops followed per URL; each is re-checked.")
    max_concurrency: int = Field(
        default=8, ge=1, le=256,
        description="Images fetched and decoded at the same time per replica process (so at most this many file "
        "bodies of up to `max_bytes` are held at once).",
    )
    max_fetches_per_request: int = Field(
        default=4, ge=1, le=256,
        description="Of those, at most this many for one request: 1024 slow URLs in one request take 4 of the "
        "replica's fetch slots, never all of them, so other clients' images keep being fetched.",
    )
    allowed_ports: tuple[int, ...] = Field(
        default=(80, 443),
        description="Ports image URLs (and every redirect hop) may use. Other ports are refused unless an "
        "`allow_hosts` entry matches the host (and its port, if the entry names one), so the fetcher cannot be used "
        "to probe other services of public hosts.",
    )
    dns_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="Longest wait for one DNS lookup (also bounded by `timeout_s`); the lookup's thread is abandoned "
        "after it, the URL is refused.",
    )
    dns_threads: int = Field(
        default=4, ge=1, le=64,
        description="Threads of the image fetcher's own DNS pool per replica process. Lookups never run in the "
        "default thread pool that decoding and model work use, so a slow resolver can stall at most these threads; "
        "further lookups queue and time out.",
    )
    user_agent: str = Field(
        default="ray-classifier-image-fetcher/0.1", min_length=1, description="User-Agent header sent with fetches."
    )
    allowed_formats: tuple[str, ...] = Field(
        default=DEFAULT_FORMATS,
        description="PIL image formats accepted (upper case, e.g. JPEG, PNG, WEBP, GIF, BMP, TIFF). Formats that call "
        "external programs (EPS) should never be added.",
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of CA certificates trusted for https fetches instead of the default "
        "bundle (for an internal image store with a private CA)."
    )

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _schemes(cls, v: Any) -> tuple[str, ...]:
        items = _as_tuple(v, "allowed_schemes")
        out = tuple(str(s).lower().strip() for s in items)
        bad = [s for s in out if s not in SUPPORTED_SCHEMES]
        if bad:
            raise ValueError(f"allowed_schemes {bad} not supported; allowed: {list(SUPPORTED_SCHEMES)}")
        if not out:
            raise ValueError(f"allowed_schemes is empty; allowed values: {list(SUPPORTED_SCHEMES)}")
        return out

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> tuple[int, ...]:
        items = _as_tuple(v, "allowed_ports")
        out = []
        for p in items:
            if isinstance(p, bool) or not str(p).strip().isdigit() or not 0 < int(p) < 65536:
                raise ValueError(f"allowed_ports entry {p!r} is not a port number 1-65535")
            out.append(int(p))
        if not out:
            raise ValueError("allowed_ports is empty; give at least one port (default: 80, 443)")
        return tuple(dict.fromkeys(out))

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> tuple[str, ...]:
        items = tuple(str(s).strip() for s in _as_tuple(v, "allow_hosts"))
        for entry in items:
            parse_allow_entry(entry)  # raises naming the entry and the accepted forms
        return items

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _formats(cls, v: Any) -> tuple[str, ...]:
        out = tuple(str(s).upper().strip() for s in _as_tuple(v, "allowed_formats"))
        known = _pil_formats()
        bad = [f for f in out if f not in known]
        if bad:
            raise ValueError(f"allowed_formats {bad} are not image formats this Pillow reads; known: {sorted(known)}")
        if "EPS" in out:
            raise ValueError("allowed_formats must not contain 'EPS': decoding it runs Ghostscript on client bytes")
        if not out:
            raise ValueError(f"allowed_formats is empty; pick from {sorted(known)}")
        return out


def _as_tuple(v: Any, name: str) -> tuple:
    if isinstance(v, str):
        return tuple(p for p in (s.strip() for s in v.split(",")) if p)  # env-var friendly "a,b"
    if isinstance(v, (list, tuple, set, frozenset)):
        return tuple(v)
    raise ValueError(f"{name} must be a list of strings, got {v!r}")
