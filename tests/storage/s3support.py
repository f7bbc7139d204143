"""Shared bits of the object-storage tests (not a test module: no fixtures here)."""

from __future__ import annotations

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_options(endpoint: str, **extra) -> dict:
    """storage_options for s3fs against a local server."""
    return {
        "endpoint_url": endpoint,
        "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"region_name": CREDENTIALS["AWS_DEFAULT_REGION"]},
        **extra,
    }
