"""One local Spark session (local[2]) for every Spark test of the run; skipped, saying so, only without Java."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.prerequisites import MIN_JAVA, java_major


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The session `run_spark` finds active and reuses (it stops only the sessions it started)."""
    major = java_major()
    if major is None or major < MIN_JAVA:
        pytest.skip(f"the Spark engine needs Java {MIN_JAVA}+: found {major or 'no java'}")
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers import fhirsvc from this interpreter
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # every listener of the session on loopback
    session = (
        SparkSession.builder.master("local[2]")
        .appName("fhirsvc tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")  # no listener beyond loopback
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
