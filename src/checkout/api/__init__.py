"""The checkout HTTP API (FastAPI): :func:`create_app` builds it for given settings."""

from checkout.api.app import create_app

__all__ = ["create_app"]
