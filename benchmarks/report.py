"""The results as a Markdown report: the table, the target checks, cold starts, environment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.load import Result, median

#: The target the issue's goals are checked against (production settings, telemetry off).
PRIMARY = "userplane"
BARE = "bare"
PGBENCH = "pgbench"
#: The reference peer (issue 21), and the scenarios it has no route for.
SEED = "seed"
NOT_ON_SEED = ("get_by_email",)
#: The scenarios the issue compares with the bare stack.
VERSUS_BARE = ("get_by_id", "create", "update")
RPS_RATIO_MIN = 0.8
P99_RATIO_MAX = 1.5
PAGE_RATIO_MIN = 0.8
HELP_MAX_MS = 150.0


@dataclass
class Summary:
    """The medians of one scenario and target over the measured rounds."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    precondition_failed: int
    app_cpu_ms: float | None
    db_cpu_ms: float | None
    rounds: list[float] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def summarize(results: Sequence[Result]) -> Summary:
    """Medians of rps, latencies and CPU per request; errors and 412s summed over rounds."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return median(present) if present else None

    return Summary(
        rps=median([r.rps for r in results]),
        p50_ms=median([r.p50_ms for r in results]),
        p99_ms=median([r.p99_ms for r in results]),
        errors=sum(r.errors for r in results),
        precondition_failed=sum(r.precondition_failed for r in results),
        app_cpu_ms=med([r.per_request_ms(r.app_cpu_s) for r in results]),
        db_cpu_ms=med([r.per_request_ms(r.db_cpu_s) for r in results]),
        rounds=[r.rps for r in results],
        details=sorted({r.detail for r in results if r.detail}),
    )


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def results_table(
    summaries: Mapping[tuple[str, str], Summary], scenarios: Sequence[str], targets: Sequence[str]
) -> str:
    """The main table: one row per scenario and target, ratios on the userplane rows.

    The seed's row of a scenario it has no route for (get_by_email) reads
    "n/a", and so do the userplane rows' ratios to it.
    """
    head = (
        "| scenario | target | req/s | req/s per round | p50 ms | p99 ms | errors | 412 "
        "| app CPU ms/req | DB CPU ms/req | req/s ÷ bare | p99 ÷ bare "
        "| req/s ÷ seed | p99 ÷ seed | req/s ÷ pgbench |"
    )
    rows = [head, "|" + "---|" * 15]
    for scenario in scenarios:
        bare = summaries.get((scenario, BARE))
        pg = summaries.get((scenario, PGBENCH))
        seed = summaries.get((scenario, SEED))
        no_seed = SEED in targets and scenario in NOT_ON_SEED
        for target in targets:
            s = summaries.get((scenario, target))
            if s is None:
                if target == SEED and no_seed:
                    rows.append(f"| {scenario} | {target} |" + " n/a |" * 13)
                continue
            ours = target.startswith(PRIMARY)
            per_round = " / ".join(f"{x:,.0f}" for x in s.rounds)
            errors = str(s.errors) + (f" ({'; '.join(s.details)})" if s.details else "")
            if ours and seed:
                versus_seed = f"{_ratio(s.rps, seed.rps)} | {_ratio(s.p99_ms, seed.p99_ms)}"
            else:
                versus_seed = "n/a | n/a" if ours and no_seed else " | "
            rows.append(
                f"| {scenario} | {target} | {_num(s.rps, 0)} | {per_round} | {_num(s.p50_ms, 2)} "
                f"| {_num(s.p99_ms, 2)} | {errors} | {s.precondition_failed} "
                f"| {_num(s.app_cpu_ms, 3)} | {_num(s.db_cpu_ms, 3)} "
                f"| {_ratio(s.rps, bare.rps) if ours and bare else ''} "
                f"| {_ratio(s.p99_ms, bare.p99_ms) if ours and bare else ''} "
                f"| {versus_seed} "
                f"| {_ratio(s.rps, pg.rps) if ours and pg else ''} |"
            )
    return "\n".join(rows)


@dataclass
class Check:
    """One of the issue's targets: what was measured against what is required."""

    name: str
    measured: str
    required: str
    met: bool | None  # None: not measured in this run


def checks(
    summaries: Mapping[tuple[str, str], Summary], help_ms: float | None, target: str = PRIMARY
) -> list[Check]:
    """The issue's targets, for ``target``."""
    out: list[Check] = []
    for scenario in VERSUS_BARE:
        ours, bare = summaries.get((scenario, target)), summaries.get((scenario, BARE))
        if ours is None or bare is None:
            out.append(Check(f"{scenario}: req/s vs bare", "not run", "≥ 0.80", None))
            continue
        ratio = ours.rps / bare.rps if bare.rps else 0.0
        out.append(
            Check(
                f"{scenario}: req/s vs bare",
                f"{ratio:.2f} ({ours.rps:,.0f} / {bare.rps:,.0f})",
                f"≥ {RPS_RATIO_MIN:.2f}",
                ratio >= RPS_RATIO_MIN,
            )
        )
        p99 = ours.p99_ms / bare.p99_ms if bare.p99_ms else math.inf
        out.append(
            Check(
                f"{scenario}: p99 vs bare",
                f"{p99:.2f} ({ours.p99_ms:.1f} ms / {bare.p99_ms:.1f} ms)",
                f"≤ {P99_RATIO_MAX:.2f}",
                p99 <= P99_RATIO_MAX,
            )
        )
    first, hundred = (
        summaries.get(("list_page_1", target)),
        summaries.get(("list_page_100", target)),
    )
    if first is not None and hundred is not None:
        ratio = hundred.rps / first.rps if first.rps else 0.0
        out.append(
            Check(
                "list page 100 vs page 1 (req/s)",
                f"{ratio:.2f} ({hundred.rps:,.0f} / {first.rps:,.0f})",
                f"≥ {PAGE_RATIO_MIN:.2f}",
                ratio >= PAGE_RATIO_MIN,
            )
        )
    ours_all = {k[0]: v for k, v in summaries.items() if k[1] == target}
    if ours_all:
        errors = sum(s.errors for s in ours_all.values())
        where = ", ".join(f"{k} {s.errors}" for k, s in ours_all.items() if s.errors)
        out.append(
            Check(
                "errors at 64 connections (all scenarios, all rounds)",
                f"{errors}" + (f" ({where})" if where else ""),
                "0",
                errors == 0,
            )
        )
    if help_ms is not None:
        out.append(
            Check(
                "`userplane --help` cold start",
                f"{help_ms:.0f} ms",
                f"≤ {HELP_MAX_MS:.0f} ms",
                help_ms <= HELP_MAX_MS,
            )
        )
    return out


#: Issue 21: userplane's req/s ÷ the reference peer's, at least, per scenario
#: (the list target is checked on the first page).
VERSUS_SEED = (
    ("get_by_id", 3.0),
    ("mix", 3.0),
    ("create", 4.0),
    ("update", 4.0),
    ("list_page_1", 5.0),
)
#: Issue 21: userplane's p99 ÷ the peer's, at most, in every scenario the peer has.
SEED_P99_RATIO_MAX = 1 / 3
#: Issue 21: userplane's req/s ÷ the bare stack's on get by id, at least.
BARE_GET_RATIO_MIN = 0.85


def _rps_check(
    name: str, ours: Summary | None, theirs: Summary | None, required: str, low: float
) -> Check:
    """``ours`` req/s ÷ ``theirs``, met at ``low`` or more; "not run" without both."""
    if ours is None or theirs is None or not theirs.rps:
        return Check(name, "not run", required, None)
    ratio = ours.rps / theirs.rps
    return Check(name, f"{ratio:.2f} ({ours.rps:,.0f} / {theirs.rps:,.0f})", required, ratio >= low)


def peer_checks(
    summaries: Mapping[tuple[str, str], Summary], target: str = PRIMARY, connections: int = 64
) -> list[Check]:
    """Issue 21's targets for ``target``: against the reference peer, the bare stack, errors."""
    out: list[Check] = []
    order = [scenario for scenario, _ in VERSUS_SEED]
    for scenario, low in VERSUS_SEED:
        ours, peer = summaries.get((scenario, target)), summaries.get((scenario, SEED))
        out.append(_rps_check(f"{scenario}: req/s vs seed", ours, peer, f"≥ {low:.1f}", low))
    scenarios = sorted(
        {k[0] for k in summaries if k[1] == target and k[0] not in NOT_ON_SEED},
        key=lambda n: order.index(n) if n in order else len(order),
    )
    for scenario in scenarios or order:
        ours, peer = summaries.get((scenario, target)), summaries.get((scenario, SEED))
        name = f"{scenario}: p99 vs seed"
        if ours is None or peer is None or not peer.p99_ms:
            out.append(Check(name, "not run", "≤ 0.33", None))
            continue
        ratio = ours.p99_ms / peer.p99_ms
        out.append(
            Check(
                name,
                f"{ratio:.2f} ({ours.p99_ms:.1f} ms / {peer.p99_ms:.1f} ms)",
                "≤ 0.33",
                ratio <= SEED_P99_RATIO_MAX,
            )
        )
    ours, bare = summaries.get(("get_by_id", target)), summaries.get(("get_by_id", BARE))
    required = f"≥ {BARE_GET_RATIO_MIN:.2f}"
    out.append(_rps_check("get_by_id: req/s vs bare", ours, bare, required, BARE_GET_RATIO_MIN))
    ours_all = {k[0]: v for k, v in summaries.items() if k[1] == target}
    if ours_all:
        errors = sum(s.errors for s in ours_all.values())
        where = ", ".join(f"{k} {s.errors}" for k, s in ours_all.items() if s.errors)
        out.append(
            Check(
                f"errors at {connections} connections (all scenarios, all rounds)",
                f"{errors}" + (f" ({where})" if where else ""),
                "0",
                errors == 0,
            )
        )
    return out


#: Field-level encryption: (scenario, lowest, highest) req/s with it on ÷ off.
ENCRYPTION_BOUNDS = (
    ("create", 0.85, None),
    ("get_by_id", 0.85, None),
    ("get_by_email", 0.90, 1.10),
)


def encryption_checks(
    summaries: Mapping[tuple[str, str], Summary], encrypted: str, plain: str = PRIMARY
) -> list[Check]:
    """The encryption issue's targets: ``encrypted`` against ``plain`` in the same run."""
    out: list[Check] = []
    for scenario, low, high in ENCRYPTION_BOUNDS:
        required = f"≥ {low:.2f}" if high is None else f"{low:.2f} to {high:.2f}"
        on, off = summaries.get((scenario, encrypted)), summaries.get((scenario, plain))
        name = f"{scenario}: req/s encrypted vs not"
        if on is None or off is None or not off.rps:
            out.append(Check(name, "not run", required, None))
            continue
        ratio = on.rps / off.rps
        met = ratio >= low and (high is None or ratio <= high)
        out.append(Check(name, f"{ratio:.2f} ({on.rps:,.0f} / {off.rps:,.0f})", required, met))
    return out


#: The audit trail and one webhook subscription: req/s with both on ÷ both off.
RECORDING_BOUNDS = (("create", 0.85), ("update", 0.85))


def recording_checks(
    summaries: Mapping[tuple[str, str], Summary], unrecorded: str, recorded: str = PRIMARY
) -> list[Check]:
    """The audit issue's targets: ``recorded`` (audit and webhooks on) against ``unrecorded``."""
    out: list[Check] = []
    for scenario, low in RECORDING_BOUNDS:
        on, off = summaries.get((scenario, recorded)), summaries.get((scenario, unrecorded))
        name = f"{scenario}: req/s with audit and a webhook vs without"
        out.append(_rps_check(name, on, off, f"≥ {low:.2f}", low))
    return out


def checks_table(items: Sequence[Check]) -> str:
    """The checks as a Markdown table."""
    rows = ["| target | measured | required | verdict |", "|---|---|---|---|"]
    for c in items:
        verdict = "-" if c.met is None else ("met" if c.met else "**MISSED**")
        rows.append(f"| {c.name} | {c.measured} | {c.required} | {verdict} |")
    return "\n".join(rows)


def bullet_table(pairs: Sequence[tuple[str, str]]) -> str:
    """Two-column Markdown table."""
    rows = ["| | |", "|---|---|"]
    rows += [f"| {k} | {v} |" for k, v in pairs]
    return "\n".join(rows)
