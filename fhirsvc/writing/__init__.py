"""Writing findings to a FHIR server and recording them in the store: shared by the poller and the worklist job."""
