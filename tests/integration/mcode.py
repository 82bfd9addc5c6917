"""The public mCODE STU4 examples (npm package hl7.fhir.us.mcode@4.0.0, CC0), fetched once and cached."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import orjson

PACKAGE = "hl7.fhir.us.mcode@4.0.0"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "mcode-4.0.0"


def example_dir() -> Path:
    """package/example/ of the npm package, downloaded with `npm pack` on first use."""
    examples = CACHE / "package" / "example"
    if examples.is_dir():
        return examples
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is needed to fetch the mCODE examples")
    CACHE.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=CACHE, check=True, capture_output=True, text=True)
    archive = CACHE / packed.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return examples


def example_resources() -> list[dict[str, Any]]:
    """Every example resource except the two example Bundles (their entries are also shipped one by one)."""
    resources = [orjson.loads(path.read_bytes()) for path in sorted(example_dir().glob("*.json"))]
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") not in (None, "Bundle")]


def as_transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }
