"""Where a training step's time goes, for any composed training config.

``python -m avsac_lit.bench +experiment=ms3 [overrides] ['bench.compare="override ..."']``

Builds the config's model and optimiser (weights from its weight files, or the fixed random init),
feeds it random inputs shaped like the task's training batches (S4: only frame 1 labelled) and
times training steps: per part (encoders: the visual backbone and VGGish, or the feature cache
standing in for them; decoder; mask head; loss; backward; optimiser),
clips per second, the step's FLOPs (torch's FlopCounterMode; a multiply-add counts 2) with the
GFLOP/s achieved beside the GFLOP/s this machine's matmul reaches in the same process, and the
step's peak memory (CUDA's allocator on a GPU, less what other configs in the process hold; the
peak resident set of the process on the CPU).

With ``bench.compare`` a second config (the first plus those overrides) is built in the same
process and the two are stepped in turn (A, B, A, B, ...), so that a noisy machine slows both
alike; the table gives each one's medians and B / A. The warm-up steps also fill the feature cache
(kept in a temporary folder), so timed steps see what every epoch after the first sees.
The last line printed is one JSON object for scripts, also written to ``bench.json`` in the run's
directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from avsac_lit.profiling.steps import PARTS, time_steps
from avsac_lit.run.assemble import CONFIG_PATH
from avsac_lit.run.wrapper import refusals_in_one_line
from avsac_lit.storage.atomic import atomic_path


def compose_compared(overrides: list[str]) -> DictConfig:
    """The second config, composed by the running Hydra app (its search path and hydra node)."""
    return compose(config_name="bench", overrides=overrides, return_hydra_config=True)


def print_table(results: dict) -> None:
    names = [n for n in ("A", "B") if n in results]
    table = Table(title="Training step, median seconds")
    table.add_column("part")
    for name in names:
        table.add_column(f"{name}: {results[name]['config']}", justify="right")
    if "ratio_b_over_a" in results:
        table.add_column("B / A", justify="right")
    for part in (*PARTS, "step"):
        row = [f"{results[n]['seconds'][part]:.3f}" for n in names]
        if "ratio_b_over_a" in results:
            ratio = results["ratio_b_over_a"][part]
            row.append("-" if ratio is None else f"{ratio:.3f}")
        table.add_row(part, *row)
    extra = ("clips_per_s", "gflop", "gflop_per_s", "peak_memory_gb")
    for key in extra:
        if key in results["A"]:
            table.add_row(key.replace("_", " "), *(str(results[n].get(key, "-")) for n in names))
    if results["A"]["warmup_seconds"]:
        table.add_row(
            "first step (untimed)", *(f"{results[n]['warmup_seconds'][0]:.3f}" for n in names)
        )
    console = Console()
    console.print(table)
    if "first_loss_difference" in results:
        console.print(
            f"first-step loss (same initial weights): A {results['A']['losses'][0]:.8f}, "
            f"B {results['B']['losses'][0]:.8f}, difference {results['first_loss_difference']:.2e}"
        )
    peak = results["matmul_peak_gflop_per_s"]
    shares = "".join(
        f"; {n} achieves {100 * results[n]['gflop_per_s'] / peak:.0f}%"
        for n in names
        if "gflop_per_s" in results[n]
    )
    console.print(
        f"matmul peak on {results['device']} ({results['threads']} threads): {peak} GFLOP/s"
        + shares
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
@refusals_in_one_line("avsac_lit.bench")
def main(cfg: DictConfig) -> None:
    compared = None
    if cfg.bench.compare:
        changes = cfg.bench.compare
        changes = changes.split() if isinstance(changes, str) else list(changes)
        overrides = [*HydraConfig.get().overrides.task]
        overrides = [o for o in overrides if not o.startswith("bench.compare")]
        compared = compose_compared([*overrides, *changes])
    results = time_steps(cfg, compared)
    print_table(results)
    with atomic_path(Path(cfg.paths.output_dir) / "bench.json") as partial:
        partial.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
