"""Unit conversion to each measure's canonical unit (viral load copies/mL, HbA1c %)."""

from __future__ import annotations

from collections.abc import Callable

# UCUM codes and the free-text spellings labs send for "copies per millilitre".
_COPIES = frozenset({"{copies}/ml", "copies/ml", "cp/ml", "{cp}/ml", "/ml", "1/ml", "{#}/ml", "#/ml", ""})
# Above this a log10 value is implausible (10^10 copies/mL); it is a copies value mislabelled as log.
_MAX_LOG10 = 10.0


def copies_per_ml(value: float, unit: str, log_scale: bool) -> float | None:
    """HIV-1 RNA in copies/mL; log10 results (by LOINC or by unit) become 10^x. IU/mL is not convertible."""
    unit_key = unit.strip().lower().replace(" ", "")
    if log_scale or "log" in unit_key:
        return round(10.0**value, 1) if 0.0 <= value <= _MAX_LOG10 else None
    if unit_key in _COPIES:
        return value
    return None


def hba1c_percent(value: float, unit: str, log_scale: bool) -> float | None:
    """HbA1c in NGSP %; IFCC mmol/mol converts by the IFCC-NGSP master equation (NGSP = 0.0915·IFCC + 2.15)."""
    unit_key = unit.strip().lower()
    if unit_key in {"%", "percent", "% of total hgb", "%{hb}"}:
        return value
    if unit_key in {"mmol/mol", "mmol/mol{hb}"}:
        return round(0.0915 * value + 2.15, 2)
    return None


Converter = Callable[[float, str, bool], "float | None"]

CONVERTERS: dict[str, Converter] = {"copies/mL": copies_per_ml, "%": hba1c_percent}
