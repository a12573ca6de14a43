"""The Serve application: configuration, the app builder, and the foreground runner (`python -m serve_app`)."""
