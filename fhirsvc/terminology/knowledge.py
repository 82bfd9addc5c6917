"""Knowledge: the drug catalog and every enabled program, loaded once per process from mappings/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fhirsvc.terminology.catalog import DrugCatalog, load_catalog
from fhirsvc.terminology.paths import data_dir
from fhirsvc.terminology.programs import Program, load_program


@dataclass(frozen=True)
class Knowledge:
    catalog: DrugCatalog
    programs: tuple[Program, ...]

    def program_drugs(self, program: Program) -> dict[str, str]:
        """Ingredient → class for the program's catalog condition."""
        condition = program.catalog_condition
        return {name: drug.classes[condition] for name, drug in self.catalog.drugs.items() if condition in drug.classes}


def load_knowledge(
    mappings: Path | None = None,
    overrides: dict[str, float] | None = None,
    enabled: list[str] | None = None,
    extra_programs: list[Path] | None = None,
) -> Knowledge:
    """Read mappings/ (or another folder of the same layout); unknown override keys fail loudly."""
    root = mappings or data_dir("mappings")
    catalog = load_catalog(root / "drugs")
    paths = sorted((root / "programs").glob("*.yaml")) + list(extra_programs or [])
    programs = [load_program(path, overrides) for path in paths]
    if enabled:
        programs = [p for p in programs if p.id in enabled]
    known = {p.id for p in programs}
    for key in overrides or {}:
        if key.partition(".")[0] not in known:
            raise ValueError(f"override {key}: no enabled program {key.partition('.')[0]!r}")
    aliases: dict[str, list[str]] = {}
    for program in programs:
        aliases.update(program.drug_aliases)
    return Knowledge(catalog.with_aliases(aliases), tuple(programs))
