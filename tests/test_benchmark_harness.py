"""The benchmark harness's own logic: target order, kept notes, argument checks (no load run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import harness, report


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
    assert bench.args.targets == ["userplane", "seed", "bare", "pgbench"]
    # 2 pooled HTTP targets x 4 x 2 + 64 for pgbench + 2: 82; the seed gets the
    # other 18 but 4 spare, 3 per worker (its template's 20 + 10 does not fit).
    bench.check_connection_budget()
    assert bench.seed_pool == (3, 0)
    bench.args = harness.parse_args(["--baseline", "HEAD", "--output", "/dev/null"])
    bench.check_connection_budget()  # 90 (+ 4 spare): 1 per worker left for the seed
    assert bench.seed_pool == (1, 0)
    everything = "userplane,userplane-nolimits,userplane-otel,seed,bare,pgbench"
    bench.args = harness.parse_args(["--targets", everything, "--output", "/dev/null"])
    with pytest.raises(SystemExit, match="no PostgreSQL connections left for seed"):
        bench.check_connection_budget()  # 98: nothing left for the seed
    bench.args = harness.parse_args(
        [
            "--targets",
            everything.replace("seed,", ""),
            "--baseline",
            "HEAD",
            "--output",
            "/dev/null",
        ]
    )
    with pytest.raises(SystemExit, match="hold 106 PostgreSQL connections"):
        bench.check_connection_budget()
    bench.facts = {"pg_settings": {"max_connections": "100"}, "pg_in_use": 10}
    bench.args = harness.parse_args(["--output", "/dev/null"])
    bench.check_connection_budget()  # others hold 10: 8 left, 4 spare, 1 per worker
    assert bench.seed_pool == (1, 0)
    bench.facts = {"pg_settings": {"max_connections": "300"}}
    bench.args = harness.parse_args(["--output", "/dev/null"])
    bench.check_connection_budget()
    assert bench.seed_pool == (20, 10)  # the template's own pool, when it fits


def _summary(rps: float, p99: float, errors: int = 0) -> report.Summary:
    return report.Summary(
        rps=rps,
        p50_ms=p99 / 3,
        p99_ms=p99,
        errors=errors,
        precondition_failed=0,
        app_cpu_ms=None,
        db_cpu_ms=None,
        rounds=[rps],
    )


def test_the_results_table_compares_with_the_seed_and_says_n_a_where_it_has_no_route() -> None:
    targets = ["userplane", "userplane@HEAD", "seed", "bare", "pgbench"]
    summaries = {
        ("get_by_id", "userplane"): _summary(3000, 20),
        ("get_by_id", "userplane@HEAD"): _summary(2400, 30),
        ("get_by_id", "seed"): _summary(600, 100),
        ("get_by_id", "bare"): _summary(4000, 10),
        ("get_by_id", "pgbench"): _summary(20000, 5),
        ("get_by_email", "userplane"): _summary(2800, 25),
        ("get_by_email", "bare"): _summary(3500, 12),
    }
    table = report.results_table(summaries, ["get_by_id", "get_by_email"], targets)
    rows = table.splitlines()
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    assert head[-5:] == [
        "req/s ÷ bare",
        "p99 ÷ bare",
        "req/s ÷ seed",
        "p99 ÷ seed",
        "req/s ÷ pgbench",
    ]
    cells = {
        tuple(c.strip() for c in r.strip("|").split("|")[:2]): [
            c.strip() for c in r.strip("|").split("|")
        ]
        for r in rows[2:]
    }
    assert all(len(row) == len(head) for row in cells.values())
    assert cells[("get_by_id", "userplane")][-5:] == ["0.75", "2.00", "5.00", "0.20", "0.15"]
    assert cells[("get_by_id", "userplane@HEAD")][-3:-1] == ["4.00", "0.30"]
    assert cells[("get_by_id", "seed")][-5:] == ["", "", "", "", ""]
    assert cells[("get_by_email", "seed")][2:] == ["n/a"] * 13
    assert cells[("get_by_email", "userplane")][-3:-1] == ["n/a", "n/a"]


def test_issue_21_targets_are_checked_against_the_seed_and_the_bare_stack() -> None:
    summaries = {}
    for scenario, (ours, seed) in {
        "get_by_id": (3000, 900),  # 3.33 >= 3.0
        "list_page_1": (2000, 500),  # 4.0 < 5.0: missed
        "list_page_100": (1900, 300),
        "create": (1600, 400),  # 4.0 >= 4.0
        "update": (1600, 350),
        "mix": (2500, 800),
    }.items():
        summaries[(scenario, "userplane")] = _summary(ours, 30)
        summaries[(scenario, "seed")] = _summary(seed, 100 if scenario != "mix" else 60)
    summaries[("get_by_id", "bare")] = _summary(3400, 10)  # 0.88 >= 0.85
    summaries[("get_by_email", "userplane")] = _summary(2800, 25, errors=2)
    verdicts = {c.name: c.met for c in report.peer_checks(summaries)}
    assert verdicts["get_by_id: req/s vs seed"] is True
    assert verdicts["list_page_1: req/s vs seed"] is False
    assert verdicts["create: req/s vs seed"] is True
    assert verdicts["mix: req/s vs seed"] is True
    assert verdicts["get_by_id: p99 vs seed"] is True  # 0.30
    assert verdicts["mix: p99 vs seed"] is False  # 0.50
    assert "get_by_email: p99 vs seed" not in verdicts  # no such route on the seed
    assert verdicts["get_by_id: req/s vs bare"] is True
    assert verdicts["errors at 64 connections (all scenarios, all rounds)"] is False


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
