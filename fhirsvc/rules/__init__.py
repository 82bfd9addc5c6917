"""Rule kinds (Python, every one listed in registry.py) applied to rule instances (program YAML) → Findings."""
