"""Terminal rendering with rich: progress bars per stage, plan and summary tables."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .plan import StagePlan
from .runner import Reporter
from .summary import RunSummary, mismatch_lines

#: outside a terminal (SLURM and CI logs, pipes) rich would cut tables to 80 columns, exactly where
#: people read run summaries afterwards: there it may use as many columns as the content needs
console = Console(stderr=True, width=None if sys.stderr.isatty() else 240)


class RichReporter(Reporter):
    """One bar per stage: episodes done, frames/s, ETA."""

    def __init__(self):
        self._p: Progress | None = None

    def stage_start(self, sp: StagePlan, episodes: int):
        self._p = Progress(
            TextColumn(f"[bold]{sp.dataset}/{sp.split}[/] {sp.stage_name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes  {task.fields[fps]:>7.1f} frames/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._p.start()
        task = self._p.add_task("build", total=episodes, fps=0.0)
        frames = [0]
        import time

        t0 = time.perf_counter()

        def update(e: int, f: int) -> None:
            frames[0] += f
            self._p.update(task, advance=e, fps=frames[0] / max(time.perf_counter() - t0, 1e-6))

        return update

    def stage_end(self, sp: StagePlan) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def print_notes(s: RunSummary) -> None:
    """What a run left out and why, then every error: in the plan and in the summary alike."""
    for line in s.skipped:
        console.print(f"[yellow]skipped[/] {escape(line)}")
    for e in s.errors:
        console.print(f"[red]error[/] {escape(e)}")


def print_plan(plans: list[StagePlan]) -> None:
    t = Table(title="navcache plan")
    for col in ("dataset", "split", "stage", "parts", "up to date", "stale", "missing", "cache"):
        t.add_column(col)
    for sp in plans:
        c = sp.counts()
        t.add_row(sp.dataset, sp.split, sp.stage_name, str(len(sp.parts)), str(c["up-to-date"]), str(c["stale"]), str(c["missing"]), "complete" if sp.finalized else "incomplete")
    console.print(t)


def print_summary(s: RunSummary, max_reasons: int = 20) -> None:
    t = Table(title="navcache summary" + (" (dry run)" if s.dry_run else ""))
    for col in ("dataset", "split", "stage", "built", "skipped", "ok", "quarantined", "frames/s", "seconds"):
        t.add_column(col)
    for st in s.stages:
        t.add_row(st.dataset, st.split, st.stage, f"{st.parts_built}/{st.parts_total}", str(st.parts_skipped), str(st.episodes_ok), str(st.episodes_quarantined), f"{st.frames_per_s:.1f}", f"{st.seconds:.1f}")
    console.print(t)
    shown = 0
    for st in s.stages:
        for q in st.quarantined:
            if shown < max_reasons:
                # reasons quote data ("[ax, ay, ...]", a label "[/x]"): print them as text, never as markup
                line = f"{st.dataset}/{st.split}/{st.stage} {q['episode_id']}: {q['reason']}"
                console.print(f"[yellow]quarantined[/] {escape(line)}")
            shown += 1
    if shown > max_reasons:
        console.print(f"... and {shown - max_reasons} more quarantined episodes (see `navcache inspect` or --json)")
    for line in mismatch_lines(s):
        console.print(f"[yellow]ids[/] {escape(line)}")
    print_notes(s)
