"""What a failure may carry to the client: its reason, URLs cut short, and a fetch failure as an image failure."""
from __future__ import annotations

from classifiers.images.errors import MAX_REASON_URL, FetchFailed, ImageLoadError, short_url


def test_short_url_keeps_short_urls_and_cuts_long_ones():
    assert short_url("http://a.example/x.png") == "http://a.example/x.png"
    long = "http://a.example/" + "x" * 500
    cut = short_url(long)
    assert len(cut) == MAX_REASON_URL and cut.endswith("...") and long.startswith(cut[:-3])


def test_a_fetch_failure_is_an_image_failure_with_its_reason():
    error = FetchFailed("could not connect to 'http://10.0.0.1/x.png'")
    assert isinstance(error, ImageLoadError)
    assert error.reason == str(error) == "could not connect to 'http://10.0.0.1/x.png'"
