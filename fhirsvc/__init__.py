"""fhirsvc: line-of-therapy state and CDS Hooks cards for second-line treatment evaluation."""
