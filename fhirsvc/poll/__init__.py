"""Polling FHIR servers: changed patients by `_lastUpdated` cursor or Bulk Data, evaluation, write-back."""
