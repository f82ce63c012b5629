"""The HTTP API: routes, handlers, and the one place error bodies are written."""
