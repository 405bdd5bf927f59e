"""``userplane users export`` and ``userplane users import``: users in and out, in bulk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from userplane.errors import InvalidInput
from userplane.frontends.cli.app import State, pass_state
from userplane.frontends.cli.users import users

if TYPE_CHECKING:
    from userplane.imports import Counts, Record

#: The exit code of an import stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130
#: Errors shown on stderr at most; the rejects file has every rejected row.
SHOWN_ERRORS = 20
_STATE_VERSION = 1


@users.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("ndjson", "csv")),
    default="ndjson",
    show_default=True,
    help="ndjson: one JSON object per line; csv: a header, then one row per user.",
)
@click.option("--include-deleted", is_flag=True, help="Deleted users too.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file (created readable by you only) [default: stdout].",
)
@pass_state
def export(state: State, fmt: str, include_deleted: bool, output: str | None) -> None:
    """Export every user, oldest first, streaming (memory stays flat however many).

    A file given with -o appears only once complete: an interrupted export
    leaves no partial file behind.
    """
    from userplane import exports

    users_ = exports.all_users(state.registry.users, include_deleted)
    chunks: Iterator[bytes] = (
        exports.ndjson(users_)
        if fmt == "ndjson"
        else (line.encode() for line in exports.csv_rows(users_))
    )
    if output is None:
        out = sys.stdout.buffer  # a reader gone (`| head`): the group ends quietly
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    folder = Path(output).resolve().parent
    if not folder.is_dir():
        raise click.BadParameter(f"{str(folder)!r} is not a folder", param_hint="'-o'")
    count = _write_atomically(Path(output), chunks) - (fmt == "csv")
    click.echo(f"exported {count} user{'s' if count != 1 else ''} to {output}", err=True)


def _write_atomically(path: Path, chunks: Iterator[bytes]) -> int:
    """Write ``chunks`` to a private temporary file beside ``path``, then rename it; lines."""
    folder = path.resolve().parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    lines = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                lines += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return lines


@users.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("ndjson", "csv")),
    default=None,
    help="The file's format [default: csv for a .csv file, else ndjson].",
)
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@click.option(
    "--on-conflict",
    type=click.Choice(("skip", "update", "fail")),
    default="skip",
    show_default=True,
    help="A row whose email (normalised) is taken: leave the user, update it, or reject the row.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Rows per transaction.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where rejected rows go, in the file's format [default: FILE.rejects.FORMAT].",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Start from the first row even if an interrupted import of FILE left its place.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr: rows, rate, ETA [default: when stderr is a terminal].",
)
@click.option(
    "--summary",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="How the counts are printed on stdout.",
)
@pass_state
def import_(
    state: State,
    file: str,
    fmt: str | None,
    dry_run: bool,
    on_conflict: str,
    batch_size: int,
    rejects: str | None,
    restart: bool,
    progress: bool | None,
    summary: str,
) -> None:
    """Import users from FILE (NDJSON or CSV; - for stdin), a batch per transaction.

    Each row is checked by the API's rules; rows at fault are listed with
    their line numbers on stderr and written to the rejects file, and the
    import goes on (exit 5 at the end). A user whose email is already there
    is skipped by default, so running an import again changes nothing; an
    interrupted import resumes after its last committed batch.
    """
    from tqdm import tqdm

    from userplane.imports import Counts, OnConflict, UserImporter, batches

    stdin = file == "-"
    fmt = fmt or ("csv" if file.lower().endswith(".csv") else "ndjson")
    path = None if stdin else Path(file)
    if path is not None and not path.is_file():
        raise click.BadParameter(f"{file!r} is not a file", param_hint="'FILE'")
    # Named so that the format is known again when it is fixed and imported.
    rejects_path = Path(rejects) if rejects else None if stdin else Path(f"{file}.rejects.{fmt}")
    state_path = None if stdin or dry_run else Path(f"{file}.import-state")
    # The database too: a place kept for one database must not skip rows in another.
    options = {
        "format": fmt,
        "on_conflict": on_conflict,
        "database": _database_of(state),
    }
    done, counts = 0, Counts()
    if state_path is not None and path is not None and state_path.exists() and not restart:
        done, counts = _resume(state_path, path, options)
        click.echo(f"resuming {file} after line {done} ({counts.rows} rows done)", err=True)
    if state_path is not None and path is not None:
        probe = state_path.with_name(state_path.name + ".tmp")
        try:  # where the place is kept must be writable before anything is written
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            click.echo(
                f"userplane: warning: cannot keep this import's place in {state_path} "
                f"({exc.strerror}): an interruption will start again from the first row "
                "(the users already there are skipped)",
                err=True,
            )
            state_path = None
    if rejects_path is not None and not dry_run:
        _check_writable(rejects_path, "--rejects")
    importer = UserImporter(
        state.registry, OnConflict(on_conflict), dry_run=dry_run
    )  # settings and storage are read here: errors surface before any output
    show = sys.stderr.isatty() if progress is None else progress
    total = None if path is None else _data_lines(path, header=fmt == "csv")
    errors_shown = 0
    with (
        _open_input(path) as stream,
        contextlib.closing(
            _Rejects(None if dry_run else rejects_path, resume=done > 0)
        ) as rejected_out,
        tqdm(
            total=total,
            initial=counts.rows,
            unit=" rows",
            file=sys.stderr,
            disable=not show,
            dynamic_ncols=True,
            mininterval=0.25,
            desc="dry run" if dry_run else "import",
        ) as bar,
    ):
        interrupt = _Interrupt(bar)
        try:
            for batch in interrupt.until_asked(batches(_records(stream, fmt, done), batch_size)):
                result = importer.import_batch(batch)
                counts.add(result.counts)
                for bad in result.rejected:
                    rejected_out.write(bad.raw, stream.header_line if fmt == "csv" else None)
                    for line in bad.lines():
                        if errors_shown < SHOWN_ERRORS:
                            bar.write(line, file=sys.stderr)
                        errors_shown += 1
                rejected_out.flush()
                if state_path is not None and path is not None:
                    _save_state(state_path, path, options, batch[-1].line, counts)
                done = batch[-1].line
                bar.update(len(batch))
        except KeyboardInterrupt:  # a second Ctrl-C: stopped inside a batch
            interrupt.abrupt = True
        finally:
            interrupt.restore()
    if interrupt.asked:
        again = "run the same command to resume" if state_path else "run it again"
        where = (
            "the batch under way may or may not have committed (a re-run skips what is there)"
            if interrupt.abrupt
            else f"{counts.rows} rows done, up to line {done}"
        )
        click.echo(f"userplane: interrupted: {where}; {again}", err=True)
        raise SystemExit(INTERRUPTED)
    if state_path is not None:
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
    if errors_shown > SHOWN_ERRORS:
        where = f" (every rejected row is in {rejects_path})" if rejects_path else ""
        click.echo(f"… and {errors_shown - SHOWN_ERRORS} more errors{where}", err=True)
    _report(counts, summary, dry_run, rejects_path)
    if counts.rejected:
        raise InvalidInput(
            f"{counts.rejected} row{'s' if counts.rejected != 1 else ''} rejected"
            + (f": see {rejects_path}" if rejects_path and not dry_run else "")
        )


class _Interrupt:
    """Ctrl-C between batches: the batch under way finishes (commit, hooks, saved place).

    A batch is written, then announced to plugins, then its place saved: stopped
    half-way, it would be committed but not counted. The first Ctrl-C asks to
    stop after it; a second one stops at once.
    """

    def __init__(self, bar: Any) -> None:
        self.asked = False
        self.abrupt = False
        self._bar = bar
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self._bar.write(
            "userplane: stopping after the batch under way (Ctrl-C again to stop now)",
            file=sys.stderr,
        )

    def until_asked(self, batches: Iterator[list[Record]]) -> Iterator[list[Record]]:
        """``batches`` until a stop is asked for."""
        for batch in batches:
            if self.asked:
                return
            yield batch

    def restore(self) -> None:
        """The SIGINT handler as it was."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.abrupt:
            self.asked = True


def _database_of(state: State) -> str:
    """Which database an import writes to, for its saved place: a file's path or a URL, masked."""
    from userplane.settings import mask_url

    storage = state.registry.storage
    path = getattr(storage, "path", None)
    return str(path) if isinstance(path, str) else mask_url(state.settings.database_url)


def _check_writable(path: Path, option: str) -> None:
    """Fail now, in one line, if ``path`` cannot be written (before any row is)."""
    existed = path.exists()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {str(path)!r}: {exc.strerror}", param_hint=f"'{option}'"
        ) from None
    if not existed:
        path.unlink()


def _records(stream: Any, fmt: str, done: int) -> Iterator[Record]:
    """The records of ``stream`` after line ``done`` (where an interrupted import stopped)."""
    from userplane.imports import read_csv, read_ndjson

    records = read_csv(stream) if fmt == "csv" else read_ndjson(stream)
    for record in records:
        if record.line > done:
            yield record


class _HeaderKeeping:
    """A text stream that remembers its first line (a CSV header, for the rejects file)."""

    def __init__(self, inner: IO[str]) -> None:
        self._inner = inner
        self.header_line: str | None = None

    def __iter__(self) -> Iterator[str]:
        for line in self._inner:
            if self.header_line is None:
                self.header_line = line if line.endswith("\n") else line + "\n"
            yield line


@contextlib.contextmanager
def _open_input(path: Path | None) -> Iterator[Any]:
    # surrogateescape: bytes that are not UTF-8 reach validation, which rejects
    # their row by its line (a control or surrogate character), not the import.
    if path is None:
        stream = open(  # noqa: SIM115
            sys.stdin.fileno(),
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
            closefd=False,
        )
    else:
        stream = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    with stream:
        yield _HeaderKeeping(stream)


class _Rejects:
    """The rejects file, opened at the first rejected row (none is left without one).

    Private (0600): rejected rows hold the personal data of the file. A CSV
    one starts with the input's header, so that it can be fixed and imported.
    """

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self._resume = resume
        self._out: IO[str] | None = None
        if path is not None and not resume:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # an earlier run's rejects would mislead

    def write(self, raw: str, header: str | None) -> None:
        if self.path is None:
            return
        if not raw:
            return  # a row too damaged to read has no text to keep (stderr names its line)
        if self._out is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            # Appending: tell() says 0 until the first write, the size says what is there.
            empty = os.fstat(fd).st_size == 0
            # Closed by close(): the file stays open across batches.
            self._out = open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
            if header and empty:
                self._out.write(header)
        self._out.write(raw + "\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _data_lines(path: Path, header: bool) -> int:
    """How many lines ``path`` holds (the progress bar's total), read in big chunks."""
    count = 0
    last = b"\n"
    with path.open("rb") as raw:
        while chunk := raw.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    count += last != b"\n"
    return max(count - header, 0)


def _identity(path: Path) -> dict[str, Any]:
    """What tells the file an interrupted import read from this one: size, time, first bytes."""
    stat = path.stat()
    with path.open("rb") as raw:
        head = hashlib.sha256(raw.read(1 << 16)).hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head}


def _save_state(
    state_path: Path, path: Path, options: dict[str, str], line: int, counts: Counts
) -> None:
    data = {
        "version": _STATE_VERSION,
        "file": _identity(path),
        "options": options,
        "line": line,
        "counts": counts.as_dict(),
    }
    temporary = state_path.with_name(state_path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, state_path)


def _resume(state_path: Path, path: Path, options: dict[str, str]) -> tuple[int, Counts]:
    from userplane.imports import Counts

    try:
        data = json.loads(state_path.read_text())
        line = int(data["line"])
        counts = Counts(**{k: int(v) for k, v in data["counts"].items()})
        same = (
            data["version"] == _STATE_VERSION
            and data["file"] == _identity(path)
            and data["options"] == options
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise click.UsageError(
            f"{state_path} (left by an interrupted import) cannot be read; "
            "pass --restart to start over"
        ) from None
    if not same:
        raise click.UsageError(
            f"{path} or the options changed since the interrupted import recorded in "
            f"{state_path}; pass --restart to start over"
        )
    return line, counts


def _report(counts: Counts, summary: str, dry_run: bool, rejects: Path | None) -> None:
    data: dict[str, Any] = {**counts.as_dict(), "rows": counts.rows, "dry_run": dry_run}
    if counts.rejected and rejects is not None and not dry_run:
        data["rejects"] = str(rejects)
    if summary == "json":
        click.echo(json.dumps(data))
        return
    verb = "would be " if dry_run else ""
    click.echo(
        f"{counts.rows} rows: {counts.created} {verb}created, {counts.updated} {verb}updated, "
        f"{counts.unchanged} unchanged, {counts.skipped} skipped (already there), "
        f"{counts.rejected} rejected"
    )
