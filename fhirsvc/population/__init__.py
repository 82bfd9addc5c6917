"""Population runs: every patient of a Bulk Data export evaluated into one worklist (embedded or on Apache Spark)."""
