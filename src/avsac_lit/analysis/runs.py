"""The runs of a multirun, as their directories hold them: finding them (where Hydra wrote
``.hydra/`` or a run wrote ``metrics.json``), reading each (``metrics.json``, ``config.yaml``,
``.hydra/overrides.yaml``), the jobs the sweeps asked for (``multirun.yaml``) and those that never
ran, why a run has no results, and where the numbers come from (commands, commits, hardware, wall
time). Hydra's override parser is imported by :func:`sweep_jobs` alone, when called.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from avsac_lit.analysis.quantities import PAPER_METRICS

ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt)\b.*")
# What a run's numbers depend on besides its config (metrics.json's keys, as a reader names them):
# runs averaged or paired across a change of one are marked. A commit with uncommitted changes
# ("+dirty") is another version than the clean commit.
VERSION_FACTS = {"commit": "commit", "torch": "torch", "lightning": "Lightning"}
NOT_RECORDED = "not recorded"


@dataclass
class Run:
    """One job of the multirun, finished or not."""

    path: Path
    overrides: list[str]
    config: DictConfig | None
    record: dict | None  # metrics.json
    problem: str | None = None
    name: str = ""  # the run's directory under the multirun's

    @property
    def versions(self) -> dict[str, str]:
        """The code and library versions the run recorded (:data:`VERSION_FACTS`)."""
        record = self.record or {}
        return {key: str(record.get(key) or NOT_RECORDED) for key in VERSION_FACTS}

    @property
    def seed(self):
        """The seed the run was configured with, else the one ``metrics.json`` records."""
        return self.select("seed", (self.record or {}).get("seed"))

    @property
    def metrics(self) -> dict[str, float]:
        """The final metrics of ``metrics.json`` (none for a run without one)."""
        return (self.record or {}).get("metrics", {})

    def select(self, key: str, default=None):
        """``key`` of the run's config as plain Python, ``default`` where it has none."""
        if self.config is None:
            return default
        try:
            value = OmegaConf.select(self.config, key, default=default)
        except Exception:  # an interpolation that only resolves inside Hydra
            return default
        return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value

    @property
    def task(self) -> str:
        """The task (``s4``, ``ms3``, ``avss``; ``?`` where nothing names it)."""
        return str((self.record or {}).get("task") or self.select("data.task", "?"))

    @property
    def column(self) -> str:
        """The table column the run falls in: its task, after ``SynthAVS-`` on synthetic data."""
        task = self.task.upper()
        return f"SynthAVS-{task}" if self.select("data.synthetic") else task


def read_run(path: Path) -> Run:
    """The run in ``path``, with its problem where it has no readable ``metrics.json``."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
    config = None
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (path / name).exists():
            config = OmegaConf.load(path / name)
            break
    record, problem = None, None
    metrics_file = path / "metrics.json"
    if metrics_file.exists():
        try:
            record = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as error:
            problem = f"unreadable metrics.json ({error})"
    else:
        problem = "no metrics.json (failed or unfinished)" + last_error(path)
    return Run(path=path, overrides=list(overrides or []), config=config, record=record,
               problem=problem)  # fmt: skip


def last_error(path: Path) -> str:
    """The last exception line in the run's log files, to say why a run has no metrics."""
    for log_file in sorted(path.glob("*.log")):
        lines = [m.group(0) for m in map(ERROR_LINE.search, log_file.read_text().splitlines()) if m]
        if lines:
            return f": {lines[-1][:200]}"
    return ""


def natural_key(path: Path) -> list:
    """Sorts paths with their numbers as numbers (``2`` before ``10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Run]:
    """Every job directory under ``root``: where Hydra wrote ``.hydra/`` or a run wrote metrics."""
    paths = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    paths |= {p.parent for p in root.rglob("metrics.json")}
    runs = [read_run(p) for p in sorted(paths, key=natural_key)]
    for run in runs:
        run.name = run.path.relative_to(root).as_posix()
    return runs


def multiruns(root: Path) -> list[Path]:
    """Every sweep's ``multirun.yaml`` under ``root``: a table completed by a second sweep in a
    sub-folder has one per sweep."""
    return sorted(root.rglob("multirun.yaml"), key=lambda path: natural_key(path.parent))


def expected_jobs(root: Path) -> list[list[str]]:
    """The jobs the multiruns were asked for, from their ``multirun.yaml``: the sweep of
    ``hydra.sweeper.params`` and the command line, combined as Hydra's basic sweeper does."""
    jobs = []
    for multirun in multiruns(root):
        cfg = OmegaConf.load(multirun)
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()]
        arguments += list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        jobs += sweep_jobs(arguments)
    return jobs


def sweep_jobs(arguments: Sequence[str]) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun: the product of every swept key's values, a key given
    again (on the command line, after the recipe's params) replacing its earlier values in place."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def check_runs(root: Path, runs: list[Run], metrics: Sequence[str]) -> list[str]:
    """Mark finished runs that lack a wanted metric; return the jobs that never ran."""
    for run in runs:
        if run.problem is None:
            absent = [m for m in metrics if m in PAPER_METRICS and m not in run.metrics]
            if absent:
                run.problem = f"metrics.json has no {', '.join(absent)}"
    ran = [sorted(run.overrides) for run in runs]
    return [" ".join(job) for job in expected_jobs(root) if sorted(job) not in ran]


def runs_without_results(root: Path, failed: list[Run], missing: list[str]) -> list[str]:
    """The report's "Runs without results" section: each run that failed with its problem, each
    job that never started (none: no section)."""
    if not (failed or missing):
        return []
    text = ["## Runs without results", ""]
    text += [f"- `{run.path.relative_to(root)}`: {run.problem}" for run in failed]
    text += [f"- never started: `{job}`" for job in missing]
    text.append("")
    return text


def provenance(root: Path, runs: list[Run]) -> list[str]:
    """Where the numbers come from: the command, the code, the machine, the time spent."""
    lines = []
    for multirun in multiruns(root):
        task = OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task") or []
        where = multirun.parent.relative_to(root).as_posix()
        suffix = "" if where == "." else f" (runs under `{where}/`)"
        lines.append(f"- Command: `python -m avsac_lit.train -m {' '.join(task)}`{suffix}")
    records = [run.record for run in runs if run.record]
    facts = (("commit", "Commit"), ("hardware", "Hardware"), ("torch", "torch"),
             ("lightning", "Lightning"))  # fmt: skip
    for key, name in facts:
        seen = sorted({str(r.get(key)) for r in records if r.get(key)})
        if seen:
            lines.append(f"- {name}: {', '.join(f'`{s}`' for s in seen)}")
    dirty = [run.name for run in runs if str((run.record or {}).get("commit")).endswith("+dirty")]
    if dirty:
        lines.append(
            f"- {len(dirty)} of the runs ran with uncommitted changes (`+dirty`: "
            f"{', '.join(f'`{name}`' for name in dirty)}): their commit does not name their code, "
            "and runs that record the same `+dirty` commit may still have run different code."
        )
    walls = [r["wall_time_s"] for r in records if isinstance(r.get("wall_time_s"), int | float)]
    if walls:
        total = sum(walls)
        lines.append(
            f"- Wall time: {total / 60:.1f} min over {len(walls)} runs "
            f"({statistics.fmean(walls):.0f} s per run, one after another)"
        )
    return lines
