"""Unit conversion to each measure's canonical unit (viral load copies/mL, HbA1c %)."""

from __future__ import annotations

from collections.abc import Callable

from fhirsvc.memo import SizedMemo

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


# Spellings of "per 1.73 m²" after _egfr_unit_key: UCUM's annotation {1.73_m2}, m^2, m², sq m, "per".
_PER_MINUTE = frozenset({"", "ml/min", "ml/min/1.73m2", "ml/min/1.73", "ml/mn/1.73m2", "ml/min/bsa"})
# SI reporting (mL/s per 1.73 m², e.g. some Nordic and Canadian labs): 1 mL/s = 60 mL/min.
_PER_SECOND = frozenset({"ml/s/1.73m2", "ml/sec/1.73m2", "ml/s", "ml/sec"})


def _egfr_spelling(unit: str) -> str:
    key = unit.strip().lower().replace(" per ", "/").replace("²", "2").replace("^2", "2").replace("**2", "2")
    for noise in (" ", "{", "}", "(", ")", "_"):
        key = key.replace(noise, "")
    key = key.replace(",", ".")  # European decimal comma: 1,73 m2
    for square in ("sq.m.", "sq.m", "sqm", "m.sq", "msq", "m*2"):
        key = key.replace(square, "m2")
    return key


# A handful of spellings recur on every result; bounded in bytes, as units are free text.
_egfr_unit_key: SizedMemo[str, str] = SizedMemo(_egfr_spelling)


def egfr(value: float, unit: str, log_scale: bool) -> float | None:
    """eGFR in mL/min/1.73 m²; labs write the unit many ways, all the same quantity (mL/s converts x 60)."""
    key = _egfr_unit_key(unit)
    if key in _PER_MINUTE:
        return value
    if key in _PER_SECOND:
        return round(value * 60.0, 1)
    return None


def albumin_creatinine_mg_per_g(value: float, unit: str, log_scale: bool) -> float | None:
    """Urine albumin/creatinine ratio in mg/g; mg/mmol x 8.84 (creatinine 113.12 g/mol)."""
    unit_key = unit.strip().lower().replace(" ", "")
    if unit_key in {"mg/g", "mg/g{creat}", "ug/mg", "ug/mg{creat}", "µg/mg", "mg/g{cre}"}:
        return value
    if unit_key in {"mg/mmol", "mg/mmol{creat}"}:
        return round(value * 8.84, 1)
    return None


def unitless(value: float, unit: str, log_scale: bool) -> float | None:
    """Scores, counts and indices (EDSS, lesion counts, antibody index): the number as reported."""
    return value


Converter = Callable[[float, str, bool], "float | None"]

CONVERTERS: dict[str, Converter] = {
    "copies/mL": copies_per_ml,
    "%": hba1c_percent,
    "mL/min/{1.73_m2}": egfr,
    "mg/g": albumin_creatinine_mg_per_g,
    "1": unitless,
    "coded": unitless,
}
