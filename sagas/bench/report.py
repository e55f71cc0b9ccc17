"""What ``saga_bench`` prints: tables for people, and one JSON line for scripts."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from .api_load import ApiFigures
from .inprocess import StatementCounts
from .runs import Memory, Run

BARE, SAGA, COMPENSATED = "bare", "saga", "compensated"
LABELS = {BARE: "bare Celery", SAGA: "saga, succeeds", COMPENSATED: "saga, compensated"}
MIB = 1024 * 1024


def machine() -> dict:
    """Which machine the figures come from, and how busy it was (load averages over 1, 5, 15 minutes)."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "load": [round(x, 2) for x in os.getloadavg()]}


@dataclass
class Results:
    """Everything one run measured; ``bursts`` and ``latency`` by mode (bare, saga, compensated)."""

    settings: dict
    statements: dict[str, StatementCounts] = field(default_factory=dict)
    parallel: dict | None = None
    bursts: dict[str, Run] = field(default_factory=dict)
    latency: dict[str, Run] = field(default_factory=dict)
    memory: Memory | None = None
    api: ApiFigures | None = None
    machine_start: dict = field(default_factory=machine)
    load_end: list | None = None

    @property
    def steps(self) -> int:
        return self.settings["parallel"] or self.settings["steps"]

    def throughput_ratio(self, mode: str = SAGA) -> float | None:
        bare, other = self.bursts.get(BARE), self.bursts.get(mode)
        return other.per_s / bare.per_s if bare and other and bare.per_s else None

    def p50_added_ms_per_step(self, mode: str = SAGA) -> float | None:
        bare, other = self.latency.get(BARE), self.latency.get(mode)
        if not bare or not other or bare.quantile_ms(0.5) is None or other.quantile_ms(0.5) is None:
            return None
        return (other.quantile_ms(0.5) - bare.quantile_ms(0.5)) / self.steps

    def p50_ratio(self, mode: str = SAGA) -> float | None:
        bare, other = self.latency.get(BARE), self.latency.get(mode)
        if not bare or not other or not bare.quantile_ms(0.5):
            return None
        return other.quantile_ms(0.5) / bare.quantile_ms(0.5)


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def lines(results: Results) -> list[str]:
    out: list[str] = []
    if results.statements:
        out += _statement_lines(results)
    if results.parallel:
        out += _parallel_lines(results.parallel)
    if results.bursts:
        out += _run_lines(results)
    if results.memory is not None and results.memory.start:
        out += _memory_lines(results.memory)
    if results.api is not None:
        out += _api_lines(results.api)
    if results.bursts:
        out += ["", (f"orchestrated / bare: throughput x{_f(results.throughput_ratio(), '.2f')} "
                     f"(compensated x{_f(results.throughput_ratio(COMPENSATED), '.2f')}), "
                     f"median latency x{_f(results.p50_ratio())}, "
                     f"+{_f(results.p50_added_ms_per_step(), '.2f')} ms per step at p50; "
                     f"{_f(results.statements[SAGA].per_step)} statements and "
                     f"{_f(results.statements[SAGA].transactions_per_step)} transactions per successful step")]
    load = results.load_end or []
    out.append(f"machine: {results.machine_start['host']}, {results.machine_start['cpus']} CPUs, load average "
               f"{results.machine_start['load'][0]:.2f} at start, {load[0] if load else '-'} at end "
               "(figures taken while other work runs are noisy)")
    return out


def _run_lines(results: Results) -> list[str]:
    out = ["", "Throughput: all started at once, until the last one ended",
           f"  {'mode':<20} {'n':>6} {'wall s':>8} {'per s':>8} {'x bare':>7}"]
    for mode, run in results.bursts.items():
        ratio = "" if mode == BARE else _f(results.throughput_ratio(mode), ".2f")
        out.append(f"  {LABELS[mode]:<20} {run.count:>6} {run.wall_s:>8.2f} {run.per_s:>8.1f} {ratio:>7}")
    out += ["Latency: one at a time, from start (sending) to end, ms",
            f"  {'mode':<20} {'n':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'p50 added/step':>15}"]
    for mode, run in results.latency.items():
        added = "" if mode == BARE else _f(results.p50_added_ms_per_step(mode), ".2f")
        out.append(f"  {LABELS[mode]:<20} {len(run.latencies):>6} {_f(run.quantile_ms(0.5)):>8} "
                   f"{_f(run.quantile_ms(0.95)):>8} {_f(run.quantile_ms(0.99)):>8} {added:>15}")
    return out


def _statement_lines(results: Results) -> list[str]:
    any_counts = next(iter(results.statements.values()))
    out = ["", f"Statements per step, in this process (broker replaced by a recorder; {any_counts.sagas} sagas each, "
               "transaction control included, start_saga apart)",
           f"  {'mode':<20} {'start':>6} {'per step':>9} {'txns/step':>10}  per saga by kind",
           f"  {LABELS[BARE]:<20} {'-':>6} {0:>9} {0:>10}  (no database)"]
    for mode, counts in results.statements.items():
        kinds = ", ".join(f"{k} {v:g}" for k, v in counts.by_kind.items())
        out.append(f"  {LABELS[mode]:<20} {counts.start:>6.1f} {counts.per_step:>9.2f} "
                   f"{counts.transactions_per_step:>10.2f}  {kinds}")
    return out


def _parallel_lines(parallel: dict) -> list[str]:
    out = ["", "Parallel stage, in this process: members run one after another through the engine (best of runs)",
           f"  {'members':>8} {'ms/member':>10} {'statements/member':>18} {'stage ms':>9}"]
    rows = [parallel["members"]] + ([parallel["reference"]] if parallel["reference"] != parallel["members"] else [])
    for row in rows:
        out.append(f"  {row['members']:>8} {row['ms_per_member']:>10.2f} {row['statements_per_member']:>18.1f} "
                   f"{row['stage_ms']:>9.1f}")
    out.append(f"  cost per member at {parallel['members']['members']} / at {parallel['reference']['members']}: "
               f"x{parallel['member_cost_ratio']:.2f}")
    return out


def _memory_lines(memory: Memory) -> list[str]:
    out = ["", "Worker memory (RSS, MiB): start = after the warm-up, end = after the last run",
           f"  {'pid':>8} {'process':<24} {'start':>8} {'end':>8} {'change':>8}"]
    for pid in sorted(set(memory.start) | set(memory.end)):
        start, end = memory.start.get(pid), memory.end.get(pid)
        role = (start or end)["role"]
        s = start["rss"] / MIB if start else None
        e = end["rss"] / MIB if end else None
        change = f"{e - s:+.1f}" if s is not None and e is not None else "-"
        out.append(f"  {pid:>8} {role:<24} {_f(s):>8} {_f(e):>8} {change:>8}")
    start_total, end_total = memory.total(memory.start) / MIB, memory.total(memory.end) / MIB
    out.append(f"  {'':>8} {'all':<24} {start_total:>8.1f} {end_total:>8.1f} {end_total - start_total:>+8.1f}"
               f"  (highest seen {memory.peak_total / MIB:.1f})")
    out.append("  all, by phase: " + ", ".join(f"{name} {memory.total(sample) / MIB:.1f}"
                                               for name, sample in memory.marks.items()))
    return out


def _api_lines(api: ApiFigures) -> list[str]:
    return ["", f"API: POST /api/sagas/ through gunicorn ({api.web_workers} sync workers, DEBUG off), "
                f"locust from another process, {api.users} users back to back for {api.seconds:g} s",
            f"  requests {api.requests}, failures {api.failures}, {api.per_s:.1f} requests/s, "
            f"latency p50 {_f(api.p50_ms, '.0f')} ms, p95 {_f(api.p95_ms, '.0f')} ms, p99 {_f(api.p99_ms, '.0f')} ms; "
            f"{api.sagas_created} sagas created in all, warm-up and ramp-up included (left pending, then removed)"]


# --- the JSON line ----------------------------------------------------------------------------


def _side(results: Results, mode: str) -> dict:
    burst, latency = results.bursts.get(mode), results.latency.get(mode)
    counts = results.statements.get(mode)
    side = {
        "n": burst.count if burst else 0,
        "wall_s": _r(burst.wall_s, 3) if burst else None,
        "throughput_per_s": _r(burst.per_s) if burst else None,
        "latency_n": len(latency.latencies) if latency else 0,
        "p50_ms": _r(latency.quantile_ms(0.5)) if latency else None,
        "p95_ms": _r(latency.quantile_ms(0.95)) if latency else None,
        "p99_ms": _r(latency.quantile_ms(0.99)) if latency else None,
        "statements_per_step": 0 if mode == BARE else (_r(counts.per_step) if counts else None),
    }
    if counts is not None:
        side["statements"] = counts.as_dict()
    return side


def _memory_json(memory: Memory | None) -> dict | None:
    if memory is None or not memory.start:
        return None

    def mib(sample: dict) -> dict:
        return {str(pid): {"role": p["role"], "rss_mib": round(p["rss"] / MIB, 1)} for pid, p in sample.items()}

    return {"start_mib": round(memory.total(memory.start) / MIB, 1),
            "end_mib": round(memory.total(memory.end) / MIB, 1),
            "peak_mib": round(memory.peak_total / MIB, 1),
            "by_phase_mib": {name: round(memory.total(sample) / MIB, 1) for name, sample in memory.marks.items()},
            "start": mib(memory.start), "end": mib(memory.end)}


def figures(results: Results) -> dict:
    if results.api is not None:
        # No workers ran: the worker figures are not measured (null), the API's are.
        keep = ("mode", "database", "broker", "saga_type")
        return {"throughput_ratio": None, "p50_added_ms_per_step": None, "statements_per_step": None,
                **{k: results.settings[k] for k in keep}, "api": results.api.as_dict(),
                "machine": {**results.machine_start, "load_end": results.load_end}}
    saga_counts = results.statements.get(SAGA)
    data = {
        "throughput_ratio": _r(results.throughput_ratio(), 3),
        "compensated_throughput_ratio": _r(results.throughput_ratio(COMPENSATED), 3),
        "p50_ratio": _r(results.p50_ratio(), 2),
        "p50_added_ms_per_step": _r(results.p50_added_ms_per_step(), 2),
        "compensated_p50_added_ms_per_step": _r(results.p50_added_ms_per_step(COMPENSATED), 2),
        "statements_per_step": _r(saga_counts.per_step) if saga_counts else None,
        "transactions_per_step": _r(saga_counts.transactions_per_step) if saga_counts else None,
        **results.settings,
        "bare": _side(results, BARE),
        "saga": _side(results, SAGA),
        "compensated": _side(results, COMPENSATED),
        "parallel_in_process": results.parallel,
        "worker_rss": _memory_json(results.memory),
        "machine": {**results.machine_start, "load_end": results.load_end},
    }
    if results.parallel:
        data["member_cost_ratio"] = _r(results.parallel["member_cost_ratio"], 3)
    return data
