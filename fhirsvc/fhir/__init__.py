"""FHIR edge: HTTP client, patient records built from bundles, prefetch and NDJSON, write validation."""
