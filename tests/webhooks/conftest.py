"""The webhook routes run on the same in-process shim as the other route tests."""

from tests.shim.conftest import anyio_backend, shim

__all__ = ["anyio_backend", "shim"]
