"""Renderings of findings: CDS Hooks cards, write-back resources, the evaluate report."""
