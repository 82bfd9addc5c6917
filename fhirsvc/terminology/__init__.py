"""Clinical content loaded once from mappings/: drug catalog, programs, unit conversion."""
