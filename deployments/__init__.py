"""Thin Ray classes: the Serve deployments (the text and image embedders: lifecycle, @serve.batch, request ids) and
the actors (the classifier state shards with ``ShardedRepo``, which calls them; the accounts actor), with their
configs, Prometheus metrics and process facts. Logic lives in `classifiers`."""
