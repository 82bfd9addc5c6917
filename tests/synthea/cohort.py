"""Seeded Synthea cohorts per program, generated once and cached under tests/.cache/synthea/ by all their inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUN = HERE / "run"
CACHE = REPO / "tests" / ".cache" / "synthea"
SYNTHEA_VERSION = "3.3.0"
# The as-of date of every evaluation and Synthea's reference date: output depends on it, so it is pinned.
REFERENCE_DATE = "2026-06-01"

Module = dict[str, Any]


class SyntheaUnavailable(RuntimeError):
    """Java is missing: the caller skips, saying so (anything else that stops Synthea is an error)."""


def synthea_jar() -> Path:
    repo = Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")
    return repo / "org" / "mitre" / "synthea" / "synthea" / SYNTHEA_VERSION / f"synthea-{SYNTHEA_VERSION}.jar"


def synthea_module(path: str) -> Module:
    """One of Synthea's own modules (e.g. "hiv_diagnosis"), read from the jar Maven resolved."""
    jar = synthea_jar()
    if not jar.is_file():
        resolve()
    with zipfile.ZipFile(jar) as archive:
        loaded: Module = json.loads(archive.read(f"modules/{path}.json"))
    return loaded


def resolve() -> None:
    """Resolve Synthea and its class path with Maven (a no-op once done)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SyntheaUnavailable("java not found: Synthea needs Java 17+ (install a JDK or set JAVA_HOME)")
    done = subprocess.run([str(RUN), "--resolve-only"], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # Java is there: a failure to resolve is an error, not a reason to skip
        raise RuntimeError(f"tests/synthea/run --resolve-only failed: {done.stderr.strip()[-2000:]}")


# Module patches: Synthea's own module in, our variant out. Written at run time into the local modules directory
# (Synthea's -d), where a file with the same relative path replaces the bundled module; nothing of Synthea's is
# copied into this repository.
Patch = Callable[[Module], Module]


def fixed_probability(state: str, transition: str, probability: float) -> Patch:
    """Replace a state's lookup-table transition (age/sex/year incidence tables) with one fixed yearly chance.

    `--module_override` can only set numbers at a JSON path, and the lookup table's rows win over the state's
    `default_probability`; so a rare disease is made common by swapping the transition itself.
    """

    def patch(module: Module) -> Module:
        node = module["states"][state]
        options = [o["transition"] for o in node.pop("lookup_table_transition")]
        others = [o for o in options if o != transition]
        node["distributed_transition"] = [{"transition": transition, "distribution": probability}] + [
            {"transition": other, "distribution": (1 - probability) / len(others)} for other in others
        ]
        module.setdefault("remarks", []).append(
            f"fhirsvc tests: '{state}' patched at run time to a fixed yearly probability {probability} of "
            f"'{transition}' (incidence raised to build a cohort; not epidemiology)."
        )
        return module

    return patch


def transition_chances(module_file: str, state: str, chances: tuple[float, ...]) -> dict[str, float]:
    """`--module_override` entries setting a state's distributed transitions to fixed chances, in order."""
    path = f"$['states']['{state}']['distributed_transition']"
    return {f"{module_file}::{path}[{n}]['distribution']": chance for n, chance in enumerate(chances)}


def complex_chances(module_file: str, state: str, branch: int, chances: tuple[float, ...]) -> dict[str, float]:
    """`--module_override` entries setting the distributions of one branch of a state's complex transition."""
    path = f"$['states']['{state}']['complex_transition'][{branch}]['distributions']"
    return {f"{module_file}::{path}[{n}]['distribution']": chance for n, chance in enumerate(chances)}


@dataclass(frozen=True)
class CohortSpec:
    """How a program's cohort is drawn: keep module, age range, incidence changes, our own modules."""

    keep: str | None  # file under tests/synthea/keep/; None: everyone simulated is exported
    age: str | None = None  # "MIN-MAX" at the reference date (Synthea -a)
    patches: Mapping[str, Patch] = field(default_factory=dict)  # Synthea module path -> patch
    overrides: Mapping[str, float] = field(default_factory=dict)  # "module.json::$.json.path" -> number
    own_modules: tuple[str, ...] = ()  # files under tests/synthea/modules/


COHORTS: dict[str, CohortSpec] = {
    # HIV diagnoses run ~1e-4 a year in Synthea's tables: a keep module alone would simulate thousands of people
    # per kept one. A 3 % yearly chance from 1993 on diagnoses most adults of this age range.
    "hiv": CohortSpec(
        keep="hiv.json",
        age="30-70",
        patches={"hiv_diagnosis": fixed_probability("Diagnosis Check Later Years", "Diagnosed_Later_Years", 0.03)},
    ),
    "t2d": CohortSpec(keep="t2d.json", age="45-85"),
    # Everyone Synthea simulates at these ages, no selection: diabetes, cancers, deaths as they come.
    "general": CohortSpec(keep=None, age="45-85"),
    # Synthea's lifetime lung cancer chance (about 1 in 15, by smoking) is an attribute-weighted transition; a
    # number at the same JSON path replaces it, so most people simulated past 65 get lung cancer.
    "nsclc": CohortSpec(
        keep="nsclc.json",
        age="55-85",
        overrides=transition_chances("lung_cancer.json", "Lung Cancer Probabilities", (0.6, 0.4)),
    ),
    # Synthea sends 1 % of people (1.5 % of smokers) down its symptomatic colorectal cancer path at 30; half of
    # them here, the rest split between screening colonoscopies and no disease.
    "crc": CohortSpec(
        keep="crc.json",
        age="50-85",
        overrides={
            **complex_chances("colorectal_cancer.json", "Delay_For_Smoking_History", 0, (0.3, 0.2, 0.5)),
            **complex_chances("colorectal_cancer.json", "Delay_For_Smoking_History", 1, (0.3, 0.2, 0.5)),
        },
    ),
    # Our own module (Synthea has none): its realistic onset rate raised with --module_override, which sets numbers
    # at a JSON path of a module as it loads.
    "ms": CohortSpec(
        keep="ms.json",
        age="30-65",
        own_modules=("multiple_sclerosis.json",),
        overrides=transition_chances("multiple_sclerosis.json", "Onset_Check", (0.05, 0.95)),
    ),
}


def _override_line(key: str, value: float) -> str:
    # java.util.Properties: ':' '=' and blanks in a key must be escaped (Synthea splits the key on "::").
    escaped = "".join("\\" + c if c in ":= \t#!\\" else c for c in key)
    return f"{escaped}={value!r}\n"


def _inputs(name: str, spec: CohortSpec, overrides: Mapping[str, float]) -> dict[str, bytes]:
    """Every file Synthea reads for this cohort, by the name it gets in the run directory."""
    files: dict[str, bytes] = {"keep.json": (HERE / "keep" / spec.keep).read_bytes()} if spec.keep else {}
    for module in spec.own_modules:
        files[f"modules/{module}"] = (HERE / "modules" / module).read_bytes()
    for path, patch in spec.patches.items():
        patched = patch(synthea_module(path))
        files[f"modules/{path}.json"] = json.dumps(patched, indent=1, sort_keys=True).encode()
    merged = {**spec.overrides, **overrides}
    if merged:
        files["module_override.properties"] = "".join(_override_line(k, v) for k, v in sorted(merged.items())).encode()
    return files


def cohort_key(name: str, seed: int, population: int, bulk: bool, files: Mapping[str, bytes], age: str | None) -> str:
    digest = hashlib.sha256()
    for part in (SYNTHEA_VERSION, REFERENCE_DATE, name, str(seed), str(population), str(bulk), str(age)):
        digest.update(part.encode() + b"\0")
    digest.update(RUN.read_bytes())
    for file_name in sorted(files):
        digest.update(file_name.encode() + b"\0" + files[file_name] + b"\0")
    return digest.hexdigest()[:16]


def generate(
    name: str,
    seed: int,
    population: int,
    *,
    keep: bool = True,
    overrides: Mapping[str, float] | None = None,
    bulk: bool = False,
    cache: Path = CACHE,
) -> Path:
    """The FHIR output directory (DIR/fhir holds Bundles, or NDJSON with `bulk`) of a seeded cohort.

    `name` is a program (COHORTS); `keep=False` draws the same people without the keep module (everyone Synthea
    simulates is exported). Generated once per set of inputs; later calls return the cached directory.
    """
    spec = COHORTS[name]
    files = _inputs(name, spec, overrides or {})
    if not keep:
        files.pop("keep.json", None)
    key = cohort_key(name, seed, population, bulk, files, spec.age)
    target = cache / f"{name}-s{seed}-p{population}{'-bulk' if bulk else ''}-{key}"
    done = target / ".complete"
    if done.is_file():
        return target / "fhir"
    resolve()
    work = target.with_name(target.name + ".inputs")
    shutil.rmtree(work, ignore_errors=True)
    for file_name, content in files.items():
        (work / file_name).parent.mkdir(parents=True, exist_ok=True)
        (work / file_name).write_bytes(content)
    args = [str(RUN), "--out", str(target), "--seed", str(seed), "--population", str(population)]
    if "keep.json" in files:
        args += ["--keep", str(work / "keep.json")]
    if (work / "modules").is_dir():
        args += ["--modules", str(work / "modules")]
    if "module_override.properties" in files:
        args += ["--module-override", str(work / "module_override.properties")]
    if spec.age:
        args += ["--age", spec.age]
    if bulk:
        args.append("--bulk")
    ran = subprocess.run(args, capture_output=True, text=True, check=False)
    if ran.returncode != 0:
        raise RuntimeError(f"Synthea failed for cohort {name}: {ran.stderr[-4000:]}")
    (target / "synthea.log").write_text(ran.stderr)
    shutil.rmtree(work, ignore_errors=True)
    done.write_text(" ".join(args[1:]) + "\n")
    return target / "fhir"
