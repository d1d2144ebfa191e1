"""How results read as text: the Pareto front, the final result, finalize's pick rule and
precision auto's timing, where the MLflow UI is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from harness.config import StudySpec
from harness.config.schema import PickRule
from harness.final.result import FinalResult
from harness.search import pareto
from harness.search.records import TrialRecord
from harness.tracking import is_server
from harness.util import paths
from harness.util.redact import redact


def format_front(recs: Sequence[TrialRecord], metric: str) -> str:
    """Pareto mode's result: the front, cheapest first."""
    front, units = pareto.front(recs, metric), pareto.UNITS[metric]
    lines = [f"Pareto front (dev loss against {units}): {len(front)} trials"]
    lines += [f"  trial {r.number:>4}: {pareto.cost(r, metric):>12,.0f} {units}, "
              f"dev {r.value:.4f}" for r in front]
    return "\n".join(lines)


def describe_pick(rule: PickRule) -> str:
    """Pareto mode's finalize.pick in words."""
    if rule.limit is None:
        return (f"the knee of the front, the trial farthest below the line between its two ends "
                f"(dev loss against log {rule.metric}, each scaled to 0..1)")
    return f"the lowest dev loss on the front with {rule.metric} <= {rule.limit:,.0f}"


def describe_timing(ms: Mapping[str, float]) -> str:
    """precision auto's measurement, ms per step by precision: 'fp32 17.2 ms, bf16 31.1 ms'."""
    return ", ".join(f"{p} {t:.1f} ms" for p, t in ms.items())


def format_final(r: FinalResult) -> str:
    """The finalize report (the result renders itself: harness.final.result)."""
    return "\n".join(r.lines())


def tracking_address(spec: StudySpec) -> str:
    """Where to look at the study's runs: the server's address, or the command that serves
    the UI for a local store."""
    uri = spec.tracking.uri
    if is_server(uri):
        return redact(str(uri))
    return f"mlflow ui --backend-store-uri {redact(uri or paths.tracking_uri())}"
