"""Thin Ray Serve deployment classes: lifecycle, @serve.batch, request ids. Logic lives in `classifiers`."""
