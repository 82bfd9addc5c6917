"""Turning FHIR data from any door (CDS prefetch, FHIR searches, Bulk NDJSON, files) into patient records."""
