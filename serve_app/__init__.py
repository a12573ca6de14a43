"""The Serve application: the HTTP ingress (routes, admission, operations, typed answers and errors), its configuration
and the app builder, the foreground runner (`python -m serve_app`), the proxies' error handling, and the API key tool
(`./scripts/keys`). The client is not here: `classifier_client`."""
