"""The benchmark harness's own logic: target order, kept notes, argument checks (no load run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import harness


def test_a_rewritten_report_keeps_the_hand_written_notes(tmp_path: Path) -> None:
    report = tmp_path / "RESULTS.md"
    report.write_text(f"# generated\n| a |\n{harness.NOTES_MARKER}\n## What each change bought\n")
    assert harness._kept_notes(report) == f"\n{harness.NOTES_MARKER}\n## What each change bought\n"
    report.write_text("# generated, no notes\n")
    assert harness._kept_notes(report) == ""
    assert harness._kept_notes(tmp_path / "missing.md") == ""


def test_baselines_become_targets_after_the_current_userplane() -> None:
    args = harness.parse_args(
        ["--targets", "userplane,bare,pgbench", "--baseline", "HEAD", "--output", "/dev/null"]
    )
    assert args.targets[-1] == "userplane@HEAD"
    bench = harness.Bench.__new__(harness.Bench)
    bench.args = args
    assert bench.ordered_targets() == ["userplane", "userplane@HEAD", "bare", "pgbench"]


def test_an_unknown_revision_or_a_stray_setting_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        harness.parse_args(["--baseline", "no-such-revision-anywhere"])
    assert "not a commit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        harness.parse_args(["--set", "PATH=/tmp"])
    assert "USERPLANE_NAME=VALUE" in capsys.readouterr().err


def test_targets_that_could_exhaust_max_connections_are_refused_before_starting() -> None:
    from userplane.settings import Settings

    bench = harness.Bench.__new__(harness.Bench)
    bench.defaults = Settings(workers=4, threads=2)
    bench.workers, bench.threads, bench.pool_max = 4, 2, 2
    bench.facts = {"pg_settings": {"max_connections": "100"}}
    bench.args = harness.parse_args(["--output", "/dev/null"])
    bench.check_connection_budget()  # 4 HTTP targets x 4 x 2 + 64 for pgbench + 2: 98
    bench.args = harness.parse_args(["--baseline", "HEAD", "--output", "/dev/null"])
    with pytest.raises(SystemExit, match="106 PostgreSQL connections"):
        bench.check_connection_budget()


def test_the_bulk_benchmark_measures_and_reports(tmp_path: Path, postgresql_server: str) -> None:
    """A small run of benchmarks/bulk.py: every run timed, the targets' table printed."""
    from benchmarks import bulk

    results = bulk.measure(postgresql_server, 300, 1, tmp_path)
    assert set(results.runs) == {
        "raw COPY",
        "import",
        "export ndjson",
        "export csv",
        "import (audit, webhooks off)",
    }
    assert all(r.seconds > 0 for runs in results.runs.values() for r in runs)
    assert all(r.rss_mib for r in results.runs["import"])
    table = bulk.table(results)
    assert "| import >= 50% of raw COPY's rows/s |" in table
    assert "| export peak RSS < 100 MiB |" in table
