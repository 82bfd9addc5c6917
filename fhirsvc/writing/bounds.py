"""How large and how frequent the worklist write-back's transactions are (no imports: the CLI reads these)."""

DEFAULT_BATCH = 50  # findings per transaction: a GuidanceResponse finding is 4-6 resources, so about 250 entries
MAX_BATCH = 200  # servers cap transaction sizes (and one refused transaction is retried finding by finding)
DEFAULT_RATE = 2.0  # transactions per second: a nightly job shares the server with its daytime users
MAX_RATE = 100.0
