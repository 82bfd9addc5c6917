"""Fixtures of the API tests: the service's JSON log lines, captured."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from fhirsvc.api.logs import configure_logging


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the service logs, as it would write it to stderr; the logging set-up is restored afterwards."""
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    levels = (root.level, httpx_logger.level)
    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(levels[0])
    httpx_logger.setLevel(levels[1])
    logging.getLogger("httpcore").setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").disabled = False
