"""The model catalogue, as data: API model names -> specs (registry.py) and the engines that run them (engines.py,
the one place besides classifiers/embedding/engines/ that names a backend)."""
