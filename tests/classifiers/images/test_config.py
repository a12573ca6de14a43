"""ImageFetchConfig: safe defaults, and every bad setting refused at startup with its value named."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from classifiers.images.config import ImageFetchConfig


def test_config_defaults_match_jina_and_are_safe():
    cfg = ImageFetchConfig()
    assert cfg.allowed_schemes == ("http", "https") and cfg.allow_hosts == ()
    assert cfg.max_bytes == 8 * 1024 * 1024 and cfg.max_redirects == 3
    for name, field in ImageFetchConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"allowed_schemes": ["http", "ftp"]}, ["'ftp'", "http", "https"]),
        ({"allowed_schemes": []}, ["empty"]),
        ({"allow_hosts": ["bad host!"]}, ["'bad host!'", "accepted forms"]),
        ({"allow_hosts": ["10.0.0.1:99999"]}, ["'10.0.0.1:99999'", "1-65535"]),
        ({"allowed_formats": ["PNG", "NOPE"]}, ["'NOPE'", "known"]),
        ({"allowed_formats": ["EPS"]}, ["EPS", "Ghostscript"]),
        ({"max_bytes": 0}, ["max_bytes"]),
        ({"unknown_field": 1}, ["unknown_field"]),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, fragments):
    with pytest.raises(ValidationError) as info:
        ImageFetchConfig(**kwargs)
    text = str(info.value)
    for f in fragments:
        assert f in text, text


def test_config_accepts_the_allowlist_forms():
    cfg = ImageFetchConfig(
        allow_hosts=["images.internal", "minio.internal:9000", "10.0.0.0/8", "127.0.0.1:8080", "::1", "[::1]:8080", "Bücher.example"],
        allowed_schemes="https",
    )
    assert cfg.allowed_schemes == ("https",) and len(cfg.allow_hosts) == 7


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"allowed_ports": [0]}, ["0", "1-65535"]),
        ({"allowed_ports": ["http"]}, ["'http'", "1-65535"]),
        ({"allowed_ports": []}, ["empty"]),
        ({"max_short_side": 8}, ["max_short_side"]),
        ({"dns_threads": 0}, ["dns_threads"]),
    ],
)
def test_new_config_fields_are_validated(kwargs, fragments):
    with pytest.raises(ValidationError) as info:
        ImageFetchConfig(**kwargs)
    for f in fragments:
        assert f in str(info.value), str(info.value)
