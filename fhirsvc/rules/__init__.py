"""Rule kinds (Python) applied to rule instances (program YAML) → Assessments."""
