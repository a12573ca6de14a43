"""The model catalogue: API model names -> specs and engine backends, as data (the one place that names a backend)."""
