"""What a run did, per stage: for the terminal, for ``--json`` and for batch-job logs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StageSummary:
    dataset: str
    split: str
    stage: str
    cache_dir: str
    parts_total: int = 0
    parts_built: int = 0
    parts_skipped: int = 0
    episodes_built: int = 0
    frames_built: int = 0
    episodes_ok: int = 0
    episodes_quarantined: int = 0
    seconds: float = 0.0
    finalized: bool = False
    quarantined: list[dict] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames_built / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunSummary:
    stages: list[StageSummary] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: "dataset/split" -> the source's cross-file report (``brief_report``): ids in one file only, ...
    sources: dict[str, dict] = field(default_factory=dict)
    #: datasets left out because they lack the chosen split or stage (said, never silent)
    skipped: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(s.episodes_quarantined for s in self.stages)

    def to_dict(self) -> dict:
        d = {"stages": [], "errors": self.errors, "skipped": self.skipped, "dry_run": self.dry_run, "sources": self.sources}
        for s in self.stages:
            d["stages"].append({**asdict(s), "frames_per_s": round(s.frames_per_s, 2)})
        d["totals"] = {
            "parts_built": sum(s.parts_built for s in self.stages),
            "parts_skipped": sum(s.parts_skipped for s in self.stages),
            "episodes_quarantined": self.quarantined,
            "frames_built": sum(s.frames_built for s in self.stages),
        }
        return d


def brief_report(report: dict, keep: int = 20) -> dict:
    """A source report with every id list cut to its first ``keep`` entries plus ``n_<key>`` counts
    (a 350K-record split must not put 350K ids into the run summary)."""
    out: dict = {}
    for k, v in report.items():
        if isinstance(v, list):
            out[f"n_{k}"] = len(v)
            out[k] = v[:keep]
        else:
            out[k] = v
    return out


def mismatch_lines(s: "RunSummary") -> list[str]:
    """One line per non-empty id list in the source reports, e.g.
    ``demo_navila/train: 3 poses without annotation (e.g. ep1-4, ...)``."""
    lines = []
    for where, rep in s.sources.items():
        for k, n in rep.items():
            if k.startswith("n_") and n:
                ids = ", ".join(map(str, rep[k[2:]][:5]))
                lines.append(f"{where}: {n} {k[2:].replace('_', ' ')} (e.g. {ids})")
    return lines
