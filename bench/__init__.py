"""Benchmarks for fhirsvc: in-process evaluation, the service under load, population evaluation (not tests)."""
