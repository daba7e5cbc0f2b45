"""What a person reads while a head trains: one short line per evaluation, and the run's summary.

The loop's log file (``logs/stdout.log``) keeps the full record of every evaluation (every val
metric, as a dict); the console gets these short lines instead::

    epoch 2/3  loss 0.8123  val risk 0.625  reason 0.410 (< majority 0.450)  high_recall 0.800  *  elapsed 12s  ETA 6s

A head names the metrics worth reading and the rule that picks ``best.pt`` with two optional task
attributes (``heads.train_loop.Task``)::

    key_metrics: {metric: label}   e.g. {"risk_accuracy": "risk", "risk_high_recall": "high_recall"}
    best_rule:   str               e.g. "highest val risk_high_recall, then macro_f1"

Without them the line shows the first few metrics by name. Baselines are the metrics named
``base_<kind>_<metric>`` (``base_majority_risk_accuracy`` is a baseline of ``risk_accuracy``,
``base_repeat_next_dist`` of ``acc_next_dist``); a key metric that does not beat one of its
baselines says so on its line and in the summary: ``yaw 0.550 (< majority 0.580)``.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

BASE = "base_"
DEFAULT_SHOWN = 4  # metrics on the line when the head names none


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_plain_metric(key: str) -> bool:
    """Not a baseline, a loss, a sample count or a position."""
    return not (key.startswith(BASE) or key == "loss" or key.startswith("loss_") or key == "n" or key.startswith("n_")
                or key in ("epoch", "step"))


def baseline_target(key: str, metrics: Iterable[str]) -> tuple[str, str] | None:
    """(metric, kind) that baseline ``key`` scores, among the names ``metrics``; None when it names none.

    ``base_<kind>_<rest>``: the metric is ``rest`` itself, else the one metric ending in ``_<rest>``
    (``base_majority_next_yaw`` -> ``acc_next_yaw``). ``base_<rest>`` (no kind) matches ``rest``.
    """
    if not key.startswith(BASE):
        return None
    rest = key[len(BASE):]
    cands = [m for m in metrics if _is_plain_metric(m)]
    if rest in cands:
        return rest, "baseline"
    kind, _, tail = rest.partition("_")
    if not tail:
        return None
    if tail in cands:
        return tail, kind
    ends = [m for m in cands if m.endswith("_" + tail)]
    return (ends[0], kind) if len(ends) == 1 else None


def baselines(metrics: Mapping[str, object]) -> dict[str, list[tuple[str, float]]]:
    """{metric: [(kind, value), ...]} for every numeric baseline in ``metrics`` that names a metric there."""
    out: dict[str, list[tuple[str, float]]] = {}
    for k, v in metrics.items():
        hit = baseline_target(k, metrics) if _is_number(v) else None
        if hit:
            out.setdefault(hit[0], []).append((hit[1], float(v)))
    return out


def key_metrics(task, metrics: Mapping[str, object]) -> dict[str, str]:
    """{metric: label} to show: the task's ``key_metrics`` present in ``metrics``, else the first few."""
    named = getattr(task, "key_metrics", None)
    if named:
        return {k: label for k, label in named.items() if k in metrics}
    plain = [k for k, v in metrics.items() if _is_number(v) and _is_plain_metric(k)]
    return {k: k for k in plain[:DEFAULT_SHOWN]}


def best_rule(task) -> str:
    return getattr(task, "best_rule", None) or "largest val select() tuple of the task"


def below(value: float, bases: list[tuple[str, float]]) -> list[str]:
    """'< majority 0.580' for each baseline ``value`` does not beat (ties do not beat)."""
    return [f"{'<' if value < b else '='} {kind} {b:.3f}" for kind, b in bases if value <= b]


def metric_text(label: str, value: float, bases: list[tuple[str, float]], show_bases: bool = False) -> str:
    """``yaw 0.550 (< majority 0.580)``; with ``show_bases`` every baseline, beaten or not."""
    if show_bases and bases:
        marks = [f"{'>' if value > b else '<' if value < b else '='} {kind} {b:.3f}" for kind, b in bases]
    else:
        marks = below(value, bases)
    return f"{label} {value:.3f}" + (f" ({', '.join(marks)})" if marks else "")


def duration(seconds: float) -> str:
    """12.3s, 4m05s, 1h02m."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def eval_line(where: str, loss: float, val: Mapping[str, object], shown: Mapping[str, str], best: bool,
              elapsed: float, eta: float | None) -> str:
    """One evaluation on one line: position, running train loss, the key val metrics, ``*`` when it became best.pt."""
    bases = baselines(val)
    parts = [where, f"loss {loss:.4f}", "val " + "  ".join(metric_text(label, float(val[k]), bases.get(k, [])) for k, label in shown.items())]
    if best:
        parts.append("*")
    parts.append(f"elapsed {duration(elapsed)}" + ("" if eta is None else f"  ETA {duration(eta)}"))
    return "  ".join(parts)


def summary(result: Mapping) -> list[str]:
    """The lines ``navcache train`` prints at the end (without ``--json``): best epoch, its key metrics
    against their baselines, those that do not beat one, and the output folder."""
    best = result.get("best") or {}
    val = best.get("val") or {}
    shown = best.get("key_metrics") or key_metrics(None, val)
    bases = baselines(val)
    lines = [f"best.pt: epoch {best.get('epoch')} (rule: {best.get('rule') or best_rule(None)})"]
    lines.append("  val " + "  ".join(metric_text(label, float(val[k]), bases.get(k, []), show_bases=True) for k, label in shown.items() if k in val))
    weak = [f"{label} {float(val[k]):.3f} {', '.join(below(float(val[k]), bases[k]))}" for k, label in shown.items()
            if k in val and k in bases and below(float(val[k]), bases[k])]
    if weak:
        lines.append("  does not beat its baseline: " + "; ".join(weak))
    lines.append(f"out_dir: {result.get('out_dir')}  (full result: --json; every metric: <out_dir>/logs/stdout.log, metrics/*.jsonl)")
    return lines


def say(text: str) -> None:
    """Print a line on stdout, above the progress bar when one is drawn (tqdm clears and redraws it)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def step_bar(enabled: bool, total: int, initial: int, desc: str):
    """A progress bar over an epoch's optimizer steps, on stderr, only when ``enabled`` and stderr is a
    terminal (logs and pipes get the epoch lines only); it disappears when closed.

    tqdm (a dependency of transformers) rather than a hand-made bar: it redraws around ``say``'s lines.
    """
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
