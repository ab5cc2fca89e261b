"""The HTTP API: a FastAPI app factory (``app``) and one router module per resource."""
