"""The FastAPI recommendation service: `create_app(settings)` builds it; `recsys serve` runs it."""
