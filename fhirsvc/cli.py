"""Command line: serve, evaluate, population, write-back, evidence, poll, demo."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import orjson
import typer

from fhirsvc.api.serving import serve as run_service
from fhirsvc.config import Settings, get_settings
from fhirsvc.fhir.resources import validate
from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.pipeline import PatientResult, evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.record.model import PatientRecord
from fhirsvc.render.evidence import evidence_document, evidence_html
from fhirsvc.render.report import patient_report
from fhirsvc.render.text import patient_text
from fhirsvc.render.timeline import IndexEntry, index_entry, index_page, page_file_name, timeline_page
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.step_therapy import evidence_for
from fhirsvc.terminology.knowledge import load_knowledge
from fhirsvc.terminology.paths import data_dir
from fhirsvc.terminology.programs import Status
from fhirsvc.writing.bounds import DEFAULT_BATCH, DEFAULT_RATE, MAX_BATCH, MAX_RATE

if TYPE_CHECKING:  # the poller, the FHIR client and the store are imported by the commands that use them
    from fhirsvc.fhir.auth import SmartBackendAuth
    from fhirsvc.poll.worker import CycleReport
    from fhirsvc.population.writeback import WriteBackSummary
    from fhirsvc.terminology.knowledge import Knowledge

# Plain (click) help: typer's rich help prints a `<bool>` type placeholder beside every flag, --help included.
app = typer.Typer(
    help="fhirsvc: line-of-therapy state and CDS Hooks cards for second-line evaluation.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class OutputFormat(StrEnum):
    json = "json"
    text = "text"
    html = "html"


def _as_of(value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("use YYYY-MM-DD", param_hint="--as-of") from None


# A bearer token on the command line is readable by every user of the machine (`ps`, /proc/<pid>/cmdline) and lands
# in shell histories: it is read from a file or from FHIRSVC_FHIR_TOKEN instead.
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="PATH",
        help="File holding a bearer token for the FHIR server (or set FHIRSVC_FHIR_TOKEN; the file wins).",
    ),
]
ArgvTokenOption = Annotated[str | None, typer.Option("--token", hidden=True)]  # refused, with the way to do it

BatchOption = Annotated[
    int,
    typer.Option("--batch", metavar="N", min=1, max=MAX_BATCH, help=f"Findings per FHIR transaction (1-{MAX_BATCH})."),
]
RateOption = Annotated[
    float,
    typer.Option(
        "--rate", metavar="R", min=0.001, max=MAX_RATE, help="Transactions per second at most (evenly spaced)."
    ),
]


def _server_option(fhir_server: str) -> str:
    try:
        return normalise_base_url(fhir_server)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fhir-server") from None


def _static_token(token_file: Path | None, argv_token: str | None, settings: Settings) -> str | None:
    """The FHIR bearer token from --token-file or FHIRSVC_FHIR_TOKEN (None: no static token); --token is refused."""
    if argv_token is not None:
        typer.echo(
            "error: --token is not accepted (a token on the command line is visible to every user in `ps`): "
            "pass it with --token-file PATH or the FHIRSVC_FHIR_TOKEN environment variable",
            err=True,
        )
        raise typer.Exit(2)
    if token_file is None:
        return settings.fhir_token.get_secret_value() if settings.fhir_token is not None else None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"error: --token-file {token_file}: cannot read it ({type(exc).__name__})", err=True)
        raise typer.Exit(2) from None
    if not token or any(character.isspace() for character in token):
        typer.echo(f"error: --token-file {token_file} must hold one token (and nothing else)", err=True)
        raise typer.Exit(2)
    return token


def _fhir_credentials(
    token_file: Path | None, argv_token: str | None, settings: Settings, fhir_server: str
) -> tuple[str | None, SmartBackendAuth | None]:
    """A static bearer token (--token-file, FHIRSVC_FHIR_TOKEN), else SMART Backend Services when configured."""
    from fhirsvc.fhir.auth import SmartConfigError, smart_auth

    token = _static_token(token_file, argv_token, settings)
    if token is not None:
        return token, None
    try:
        return None, smart_auth(settings, fhir_server)
    except SmartConfigError as exc:
        typer.echo(f"error: SMART Backend Services: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (evaluation is CPU-bound: one per core).")] = 1,
) -> None:
    """Run the CDS Hooks service."""
    run_service(host, port, get_settings(), workers)


@app.command()
def evaluate(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="PATH", help="FHIR Bundles (any type), directories of them, NDJSON files."),
    ],
    as_of: Annotated[
        str | None, typer.Option("--as-of", metavar="YYYY-MM-DD", help="Evaluate as of this date (default: today).")
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", help="json (the public contract), text, or html (timeline pages, with --out)."),
    ] = OutputFormat.json,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="DIR", help="With --format html: the directory for one page per patient."),
    ] = None,
) -> None:
    """Evaluate patients from files and print one result per patient (or write timeline pages to --out)."""
    import gc

    if (output is OutputFormat.html) != (out is not None):
        typer.echo("error: --format html and --out DIR go together", err=True)
        raise typer.Exit(2)
    day = _as_of(as_of)
    settings = get_settings()
    knowledge = load_knowledge(overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS)
    try:  # only the resources the facts read come back from NDJSON (not the routine labs no program reads)
        index = index_records(paths, keep=knowledge.observation_filter.reads)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # Patient by patient: each result is written as soon as it is ready, so memory stays flat as the population
    # grows. JSON bytes are those of orjson.dumps(results, option=OPT_INDENT_2): items indented by two spaces.
    if out is not None:
        _write_pages(index.records(), out, lambda record: evaluate_record(record, knowledge, day))
        if index.skipped:
            typer.echo(f"{index.skipped} unreadable file(s), line(s) or resource(s) skipped", err=True)
        return
    gc.freeze()  # the mappings and the index live for the whole run: keep them out of every collection
    try:
        for number, record in enumerate(index.records()):
            result = evaluate_record(record, knowledge, day)
            if output is OutputFormat.json:
                item = orjson.dumps(patient_report(result), option=orjson.OPT_INDENT_2).replace(b"\n", b"\n  ")
                sys.stdout.buffer.write((b",\n  " if number else b"[\n  ") + item)
                sys.stdout.buffer.flush()
            else:
                sys.stdout.write(("\n\n" if number else "") + patient_text(result))
                sys.stdout.flush()
    finally:
        gc.unfreeze()
    if output is OutputFormat.json:
        sys.stdout.buffer.write(b"\n]\n" if len(index) else b"[]\n")
    else:
        sys.stdout.write("\n")
    if index.skipped:
        typer.echo(f"{index.skipped} unreadable file(s), line(s) or resource(s) skipped", err=True)


class Engine(StrEnum):
    embedded = "embedded"
    spark = "spark"


# A worklist from files names the server its findings belong to; without --fhir-server it is this marker, and
# nothing can be written back from it.
FILES_SERVER = "urn:fhirsvc:files"


@app.command()
def population(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="Bulk Data NDJSON: a directory (embedded), or any URI Spark reads (s3a://, abfss://, hdfs://).",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            metavar="WORKLIST.parquet",
            help="The worklist to write: a Parquet file (embedded), a directory of part files or a URI (spark).",
        ),
    ],
    engine: Annotated[
        Engine,
        typer.Option("--engine", help="embedded (one process, no extra needs) or spark (pip install fhirsvc[spark])."),
    ] = Engine.embedded,
    master: Annotated[
        str, typer.Option("--master", metavar="URL", help="With --engine spark: the Spark master (default local[*]).")
    ] = "local[*]",
    as_of: Annotated[
        str | None, typer.Option("--as-of", metavar="YYYY-MM-DD", help="Evaluate as of this date (default: today).")
    ] = None,
    fhir_server: Annotated[
        str | None,
        typer.Option("--fhir-server", metavar="URL", help="The FHIR server the export came from (the server column)."),
    ] = None,
    write_back: Annotated[
        bool,
        typer.Option(
            "--write-back", help="Then write the worklist's findings back to --fhir-server (as `fhirsvc write-back`)."
        ),
    ] = False,
    batch: BatchOption = DEFAULT_BATCH,
    rate: RateOption = DEFAULT_RATE,
    token_file: TokenFileOption = None,
    argv_token: ArgvTokenOption = None,
) -> None:
    """Evaluate every patient of a Bulk Data export into a worklist of actionable findings (Parquet)."""
    day = _as_of(as_of)
    settings = get_settings()
    if write_back and fhir_server is None:
        typer.echo("error: --write-back needs --fhir-server URL (the server the export came from)", err=True)
        raise typer.Exit(2)
    if write_back and "://" in out:
        # The write-back streams the worklist with Arrow from the driver's file system, and records what it wrote.
        typer.echo(
            "error: --write-back reads a local worklist; run `fhirsvc write-back` where --out is readable", err=True
        )
        raise typer.Exit(2)
    server = _server_option(fhir_server) if fhir_server else FILES_SERVER
    # Credentials are checked before the evaluation, not found wanting after it.
    credentials = _fhir_credentials(token_file, argv_token, settings, server) if write_back else (None, None)
    knowledge = load_knowledge(overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS)
    started = time.monotonic()

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    if engine is Engine.embedded:
        from fhirsvc.population.embedded import run_embedded  # pyarrow: imported by this command only

        if "://" in source:
            typer.echo("error: the embedded engine reads local files; use --engine spark for a URI", err=True)
            raise typer.Exit(2)
        try:
            summary = run_embedded([Path(source)], Path(out), knowledge, day, server, progress)
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    else:
        try:
            from fhirsvc.population.spark import SparkUnavailable, run_spark
        except ImportError as exc:
            typer.echo(f"error: --engine spark needs the spark extra (pip install 'fhirsvc[spark]'): {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            summary = run_spark(source, out, settings, day, server, master, progress)
        except (FileNotFoundError, FileExistsError, SparkUnavailable) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    seconds = time.monotonic() - started
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"{summary.patients / max(seconds, 1e-9):,.0f} patients/s; worklist written to {out}")
    if write_back:
        _write_back(Path(out), server, batch, rate, credentials, settings, knowledge)


@app.command("write-back")
def write_back(
    worklist: Annotated[
        Path,
        typer.Argument(
            metavar="WORKLIST", help="A worklist of `fhirsvc population`: a Parquet file or a directory of part files."
        ),
    ],
    fhir_server: Annotated[
        str, typer.Option("--fhir-server", metavar="URL", help="The FHIR server to write to: the worklist's own.")
    ],
    batch: BatchOption = DEFAULT_BATCH,
    rate: RateOption = DEFAULT_RATE,
    token_file: TokenFileOption = None,
    argv_token: ArgvTokenOption = None,
) -> None:
    """Write a worklist's findings back to its FHIR server: batched transactions, rate-limited, resumable.

    Each finding written is recorded in the store (FHIRSVC_STORE_URL) as the poller records its own, so a re-run
    skips it and the poller closes its Task once the finding no longer holds. Credentials as for `poll`.
    """
    settings = get_settings()
    server = _server_option(fhir_server)
    _write_back(worklist, server, batch, rate, _fhir_credentials(token_file, argv_token, settings, server), settings)


def _write_back(
    path: Path,
    server: str,
    batch: int,
    rate: float,
    credentials: tuple[str | None, SmartBackendAuth | None],
    settings: Settings,
    knowledge: Knowledge | None = None,
) -> None:
    """Check the worklist against the server, write it back, print the summary; exit 1 when a batch failed."""
    import asyncio

    from fhirsvc.fhir.client import FhirClientPool
    from fhirsvc.population.writeback import WorklistRefused, WorklistWriter, client_settings, open_worklist
    from fhirsvc.store.db import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs
    target = settings.writeback_target
    if target == "off":
        typer.echo("error: FHIRSVC_WRITEBACK_TARGET is off: nothing to write back", err=True)
        raise typer.Exit(2)
    try:
        worklist = open_worklist(path, server)
    except WorklistRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"writing {worklist.rows:,} worklist rows back to {server}", err=True)
    token, auth = credentials
    if knowledge is None:
        knowledge = load_knowledge(overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS)
    store = Store(settings.store_url)
    store.upgrade()

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    async def run() -> WriteBackSummary:
        pool = FhirClientPool(client_settings(settings))
        client = pool.client(server, auth=auth)
        writer = WorklistWriter(client, store, knowledge, settings, target, token, batch, rate, progress)
        try:
            return await writer.run(worklist)
        finally:
            await pool.aclose()
            if auth is not None:
                await auth.aclose()

    try:
        summary = asyncio.run(run())
    finally:
        store.close()
    for line in summary.lines():
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def evidence(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="One patient's FHIR Bundle, directory or NDJSON.")],
    program: Annotated[str, typer.Option("--program", metavar="P", help="The program (e.g. t2d, ms).")],
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="The FHIR document (JSON); a FILE ending .html: its HTML.")
    ],
    drug: Annotated[
        str | None, typer.Option("--drug", metavar="NAME", help="The requested next-line drug (default: any).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", metavar="YYYY-MM-DD", help="Evaluate as of this date (default: today).")
    ] = None,
    patient: Annotated[
        str | None, typer.Option("--patient", metavar="ID", help="The patient, when PATH holds several.")
    ] = None,
) -> None:
    """Write the step-therapy evidence of first-line therapy (a FHIR document) for one patient."""
    day = _as_of(as_of)
    settings = get_settings()
    knowledge = load_knowledge(overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS)
    chosen = next((p for p in knowledge.programs if p.id == program), None)
    if chosen is None or chosen.step_therapy is None or not chosen.step_therapy.applies:
        reason = "unknown program" if chosen is None else "the program describes no step therapy"
        typer.echo(f"error: --program {program}: {reason}", err=True)
        raise typer.Exit(2)
    requested: list[str] = []
    if drug is not None:
        classes = knowledge.program_drugs(chosen)
        requested = sorted(knowledge.catalog.ingredients_for_text(drug) & classes.keys())
        if not requested or not all(chosen.step_therapy.next_line(d, classes) for d in requested):
            typer.echo(f"error: --drug {drug}: not a next-line drug of {program}", err=True)
            raise typer.Exit(2)
    try:
        index = index_records([path])
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    records = [r for r in index.records() if patient is None or r.reference in (patient, f"Patient/{patient}")]
    if len(records) != 1:
        typer.echo(f"error: {path} holds {len(records)} matching patients; name one with --patient ID", err=True)
        raise typer.Exit(2)
    (record,) = records
    result = evaluate_record(record, knowledge, day)
    found = evidence_for(record, result, knowledge, program, requested)
    if found is None:
        typer.echo(f"error: {record.reference} is not in program {program} on {day.isoformat()}", err=True)
        raise typer.Exit(1)
    document = evidence_document(found, knowledge.catalog, datetime.now(UTC).isoformat(timespec="seconds"))
    validate(document)
    if out.suffix.lower() in (".html", ".htm"):
        out.write_text(evidence_html(document), encoding="utf-8")
    else:
        out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    typer.echo(f"{record.reference}: {found.standing}, {len(found.trials)} first-line trial(s) -> {out}", err=True)


def _write_pages(
    records: Iterable[PatientRecord], out: Path, evaluate: Callable[[PatientRecord], PatientResult]
) -> None:
    """One timeline page per patient and an index.html listing them (the index keeps a few strings per patient)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(f"error: --out {out}: cannot create it ({type(exc).__name__})", err=True)
        raise typer.Exit(2) from None
    written: list[IndexEntry] = []
    names: set[str] = set()
    for record in records:
        result = evaluate(record)
        name = page_file_name(result.patient)
        if name in names:  # the same patient in two files: the pages would overwrite each other
            name = page_file_name(f"{result.patient}-{len(written)}")
        names.add(name)
        (out / name).write_text(timeline_page(result), encoding="utf-8")
        written.append(index_entry(name, result))
    (out / "index.html").write_text(index_page(written), encoding="utf-8")
    typer.echo(f"{len(written)} page(s) and index.html written to {out}", err=True)


# `poll` exit codes beyond 0 (done) and 1 (a cycle failed or left patients for the next one); 2 is a usage error.
POLLER_BUSY = 3  # another poller holds this server on a store that allows one at a time (SQLite)


@app.command()
def poll(
    fhir_server: Annotated[str, typer.Option("--fhir-server", help="FHIR R4 base URL to watch.")],
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between cycles.")] = 60.0,
    since: Annotated[
        str | None, typer.Option("--since", metavar="YYYY-MM-DD", help="First run: only data updated since this date.")
    ] = None,
    token_file: TokenFileOption = None,
    argv_token: ArgvTokenOption = None,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Each cycle, check that the write-backs the store believes open are on the server; write the "
            "missing ones again (after restoring the server from a backup).",
        ),
    ] = False,
) -> None:
    """Watch a FHIR server: re-evaluate patients whose data changed and write the findings back.

    With FHIRSVC_SMART_CLIENT_ID and FHIRSVC_SMART_PRIVATE_KEY_FILE set, the poller gets its own tokens (SMART
    Backend Services); a static token (--token-file, or FHIRSVC_FHIR_TOKEN), when given, is used instead.
    """
    import asyncio

    from fhirsvc.fhir.client import FhirClientPool
    from fhirsvc.fhir.errors import FhirError
    from fhirsvc.poll.leases import PollerBusy
    from fhirsvc.poll.worker import Poller
    from fhirsvc.store.db import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry query URLs with patient ids
    settings = get_settings()
    token, auth = _fhir_credentials(token_file, argv_token, settings, fhir_server)
    knowledge = load_knowledge(overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS)
    store = Store(settings.store_url)
    store.upgrade()

    async def run() -> int:
        pool = FhirClientPool(settings)
        pool.client(fhir_server, auth=auth)  # every request to the server, write-backs and $export included
        poller = Poller(settings, knowledge, store, pool)
        try:
            while True:
                try:
                    report = await poller.cycle(fhir_server, token=token, since=since, reconcile=reconcile)
                except PollerBusy as exc:
                    typer.echo(f"error: {exc}", err=True)
                    return POLLER_BUSY
                except FhirError as exc:
                    # Server down or credentials refused: nothing was committed past the cursor; try next cycle.
                    typer.echo(f"cycle failed: {type(exc).__name__}: {exc}", err=True)
                    if once:
                        return 1
                else:
                    typer.echo(
                        f"cycle: {report.resources_seen} changed resources, {report.patients} patients, "
                        f"{report.changed_states} new states, {report.written} findings written, "
                        f"{report.closed} closed, {len(report.failed)} failed, {len(report.incomplete)} incomplete"
                        + (f", {len(report.elsewhere)} left to other pollers" if report.elsewhere else ""),
                        err=True,
                    )
                    _echo_write_back_checks(report)
                    if report.circuit_open:
                        typer.echo(f"cycle ended early: {report.circuit_open}", err=True)
                    if once:
                        return 1 if report.failed else 0
                await asyncio.sleep(interval)
        finally:
            poller.release(fhir_server)
            await pool.aclose()
            if auth is not None:
                await auth.aclose()

    code = asyncio.run(run())
    store.close()
    raise typer.Exit(code)


def _echo_write_back_checks(report: CycleReport) -> None:
    """What the cycle found of its write-backs on the server: repaired references, edits, reconciliation."""
    if report.mismatched or report.repaired or report.conflicts:
        typer.echo(
            f"write-backs: {report.mismatched} stored references named another resource, {report.repaired} "
            f"repaired, {report.conflicts} edited on the server meanwhile (not overwritten)",
            err=True,
        )
    found = report.reconciliation
    if found is None:
        return
    typer.echo(
        f"reconcile: {found.checked} open write-backs checked, {found.present} on the server, {found.missing} "
        f"missing, {found.repaired} references repaired, {len(found.rewrite)} patients written again",
        err=True,
    )
    if found.server_reset:
        typer.echo(
            f"reconcile: the FHIR server lacks {found.missing} of the {found.checked} write-backs the store believes "
            "open: its data was reset or restored from a backup. Patient ids may name other people now, so nothing "
            f"was written for patients this cycle did not evaluate: {len(found.waiting)} patients' write-backs wait "
            "for their data to change.",
            err=True,
        )


mappings_app = typer.Typer(help="Check the clinical content in mappings/.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(mappings_app, name="mappings")


@mappings_app.command("check")
def mappings_check(
    folder: Annotated[
        Path | None, typer.Argument(metavar="FOLDER", help="A mappings folder (default: the bundled one).")
    ] = None,
    show_unverified: Annotated[bool, typer.Option("--unverified", help="List every unverified code.")] = False,
) -> None:
    """Validate program files, code formats and check digits, ICD-10-CM codes and drug verification."""
    from fhirsvc.terminology.check import check_mappings

    report = check_mappings(folder, rule_kinds=RULE_KINDS)
    typer.echo(f"ICD-10-CM table: {report.icd10cm_release}")
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    if show_unverified:
        for line in report.unverified:
            typer.echo(f"unverified: {line}")
    typer.echo(
        f"{report.checked_codes} codes checked, {len(report.errors)} error(s), "
        f"{len(report.unverified)} unverified code(s) or drug(s) marked as such"
    )
    if not report.ok:
        raise typer.Exit(1)


sandbox_app = typer.Typer(
    help="Try fhirsvc against a FHIR sandbox (HAPI, SMART, your own).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("load")
def sandbox_load(
    fhir_server: Annotated[str, typer.Option("--fhir-server", help="FHIR R4 base URL.")],
    paths: Annotated[
        list[Path] | None, typer.Argument(metavar="PATH", help="Bundles or folders (default: bundled fixtures).")
    ] = None,
    token_file: TokenFileOption = None,
    argv_token: ArgvTokenOption = None,
) -> None:
    """Load example patients idempotently (conditional create on identifiers: loading twice creates nothing)."""
    from fhirsvc.sandbox import load

    token = _static_token(token_file, argv_token, get_settings())
    report = load(fhir_server, paths or [_fixtures()], token)
    typer.echo(f"{report.bundles} bundles: {report.created} resources created, {report.existing} already there")
    for fixture_id, server_id in sorted(report.patients.items()):
        typer.echo(f"  {fixture_id:<40} Patient/{server_id}")


@sandbox_app.command("call")
def sandbox_call(
    service: Annotated[str, typer.Option("--service", help="Base URL of a running fhirsvc.")],
    fhir_server: Annotated[str, typer.Option("--fhir-server", help="FHIR R4 base URL the service should read.")],
    patient: Annotated[str, typer.Option("--patient", help="Patient id on that server.")],
    hook: Annotated[str, typer.Option("--hook", help="patient-view, order-select or order-sign.")] = "patient-view",
    token_file: TokenFileOption = None,
    argv_token: ArgvTokenOption = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the raw CDS Hooks response.")] = False,
) -> None:
    """Send a hook call with no prefetch (the service fetches from the FHIR server) and print the cards."""
    from fhirsvc.sandbox import call, format_cards

    token = _static_token(token_file, argv_token, get_settings())
    service_id, answer = call(service, fhir_server, patient, hook, token)
    if raw:
        sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")
        return
    typer.echo(f"{service_id} for Patient/{patient}:")
    typer.echo(format_cards(answer))


DEMO_AS_OF = date(2026, 6, 1)  # the date the bundled scenarios are written for
# fixtures/cds/ holds CDS Hooks requests (the README's worked example), not patient data.
DEMO_REQUESTS = "cds"
DEMO_REQUEST = f"{DEMO_REQUESTS}/patient-view-hiv-fail-basic.json"
STATUSES: tuple[Status, ...] = get_args(Status)


CDS_HOOKS_SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"  # calls the service from the browser


def demo_settings(settings: Settings) -> Settings:
    """The served demo: evaluates as of the table's date, CDS client authentication off (a local demo, e.g. for the
    CDS Hooks sandbox, whose signing key is published with its source code anyway), and the CDS Hooks sandbox's
    origin allowed by CORS unless FHIRSVC_CORS_ORIGINS says otherwise."""
    update: dict[str, object] = {"cds_auth": "off", "today": DEMO_AS_OF}
    if "cors_origins" not in settings.model_fields_set:
        update["cors_origins"] = [CDS_HOOKS_SANDBOX_ORIGIN]
    return settings.model_copy(update=update)


def _fixtures() -> Path:
    try:
        return data_dir("fixtures")
    except FileNotFoundError:
        typer.echo(
            "error: the example patients (fixtures/) are not part of this installation (the service image leaves "
            "them out): run this in a source checkout of fhirsvc",
            err=True,
        )
        raise typer.Exit(2) from None


def _summary(results: list[PatientResult], programs: list[str]) -> list[str]:
    """Patients per program, then findings per status (rows) and program (columns), with totals."""
    columns = [*programs, "total"]
    patients = Counter(p.program.id for r in results for p in r.programs)
    patients["total"] = len(results)
    findings = Counter((f.status, f.program) for r in results for f in r.findings)
    for (status, _), count in list(findings.items()):
        findings[(status, "total")] += count
    width = max(len(s) for s in STATUSES)
    lines = [f"{'':<{width}}" + "".join(f"{c:>7}" for c in columns)]
    lines.append(f"{'patients':<{width}}" + "".join(f"{patients[c]:>7}" for c in columns))
    for status in STATUSES:
        lines.append(f"{status:<{width}}" + "".join(f"{findings[(status, c)]:>7}" for c in columns))
    return lines


@app.command()
def demo(
    serve_too: Annotated[bool, typer.Option("--serve", help="Then start the service on localhost.")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8000,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every finding, no-action included (default: actionable ones).")
    ] = False,
) -> None:
    """Evaluate the bundled example patients (fixtures/): a summary, then the actionable findings."""
    fixtures = _fixtures()
    knowledge = load_knowledge(rule_kinds=RULE_KINDS)
    folders = sorted(p for p in fixtures.iterdir() if p.is_dir() and p.name != DEMO_REQUESTS)
    results = [evaluate_record(record, knowledge, DEMO_AS_OF) for record in index_records(folders).records()]
    typer.echo(f"fhirsvc demo: {len(results)} example patients, evaluated as of {DEMO_AS_OF}\n")
    typer.echo("\n".join(_summary(results, [p.id for p in knowledge.programs])))
    shown = [
        (result, program, finding)
        for result in results
        for program in result.programs
        for finding in program.findings
        if show_all or finding.card
    ]
    if show_all:
        typer.echo(f"\nEvery finding ({len(shown)}):")
    else:
        typer.echo(f"\nActionable findings ({len(shown)}; every finding, no-action included: fhirsvc demo --all):")
    typer.echo(f"{'patient':<40} {'program':<8} {'line':<5} finding")
    for result, program, finding in shown:
        line = str(program.current_line.number) if program.current_line else "-"
        typer.echo(f"{result.patient:<40} {program.program.id:<8} {line:<5} {finding.status}: {finding.summary}")
    typer.echo(f"\nDetails: fhirsvc evaluate fixtures/hiv --as-of {DEMO_AS_OF} --format text (a folder per program)")
    if serve_too:
        base = f"http://127.0.0.1:{port}"
        typer.echo(f"\nCDS Hooks discovery: {base}/cds-services")
        typer.echo(f"Evaluating as of {DEMO_AS_OF}, the date of the table above (FHIRSVC_TODAY pins it for `serve`).")
        typer.echo("CDS client authentication is OFF for this local demo (FHIRSVC_CDS_AUTH=off).")
        settings = demo_settings(get_settings())
        origins = ", ".join(settings.cors_origins) or "none"
        typer.echo(f"Browser origins allowed (CORS, FHIRSVC_CORS_ORIGINS): {origins}")
        typer.echo(
            f"Try: curl -s {base}/cds-services/second-line-patient-view -H 'Content-Type: application/json' "
            f"--data-binary @{fixtures / DEMO_REQUEST}"
        )
        run_service("127.0.0.1", port, settings)


if __name__ == "__main__":
    app()
