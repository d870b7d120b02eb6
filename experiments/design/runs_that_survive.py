"""Figures for docs/bad_inputs.md: DDP against one process, and a resumed run against an
uninterrupted one, on the demo's model and a 20-clip SynthAVS-MS3 at 64 px.

    python experiments/design/runs_that_survive.py ddp [override ...]
    python experiments/design/runs_that_survive.py resume [override ...]

``ddp``: ``trainer=cpu`` with 4 clips a batch against ``trainer=ddp_sim`` (2 CPU processes) with 2,
dropout off (each process draws its own masks; add trainer.precision=64-true to compare the
arithmetic without float32 rounding); prints the first step's loss (mean over the
processes) and the largest difference of any synchronised gradient, then the metrics of both runs
after 2 epochs. ``resume``: 3 epochs uninterrupted against a run that crashes as epoch 2 starts
and is resumed from its last.ckpt into a new directory; prints both runs' metrics. The tests
(tests/test_distributed.py, tests/test_train.py) assert the same on the tiny model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from avsac_lit.data.synthetic import generate
from avsac_lit.run.assemble import compose_config
from avsac_lit.system.module import AVSLitModule
from avsac_lit.train import train

SETTINGS = "++data.synthetic={videos:20,seed:3,size:64}"
COMMON = [
    "+experiment=synthetic_ms3", "data.img_size=64", "data.num_workers=0", "~logger",
    "~callbacks.overlays", "~callbacks.rich_progress_bar", "extras.print_config=false",
    "test_audio=[matched]", SETTINGS,
]  # fmt: skip
METRICS = ("val/miou", "val/f", "val/loss", "val/miou_best", "test/miou", "test/f", "test/loss")


def run(root: Path, output: Path, overrides: list[str]) -> dict[str, float]:
    cfg = compose_config("train", [*COMMON, f"data.root={root}", *overrides], output)
    return train(cfg)


def table(names: tuple[str, str], results: list[dict[str, float]]) -> None:
    print(f"| metric | {names[0]} | {names[1]} | difference |")
    print("|---|---|---|---|")
    for metric in METRICS:
        a, b = (r[metric] for r in results)
        print(f"| {metric} | {a:.10f} | {b:.10f} | {abs(a - b):.2e} |")


def ddp(root: Path, work: Path, overrides: list[str]) -> None:
    results, steps = [], []
    for name, trainer, batch in (("cpu", "cpu", 4), ("ddp", "ddp_sim", 2)):
        record = work / f"{name}_step.pt"
        extra = [
            f"trainer={trainer}", f"data.train_batch_size={batch}", "trainer.max_epochs=2",
            "model.net.dropout=0.0",
            "+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder",
            f"+callbacks.first_step.path={record}",
        ]  # fmt: skip
        results.append(run(root, work / name, [*extra, *overrides]))
        steps.append(torch.load(record))
    cpu, ddp_ = steps
    difference = max(
        (ddp_["gradients"][n] - g).abs().max().item() for n, g in cpu["gradients"].items()
    )
    largest = max(g.abs().max().item() for g in cpu["gradients"].values())
    print(f"first step: loss {cpu['loss']:.8f} (1 process) vs {ddp_['loss']:.8f} (2 processes), "
          f"difference {abs(cpu['loss'] - ddp_['loss']):.2e}")  # fmt: skip
    print(f"first step: largest gradient difference {difference:.2e} over "
          f"{len(cpu['gradients'])} tensors (largest gradient {largest:.2e})")  # fmt: skip
    table(("1 process, batch 4", "2 processes, batch 2 each"), results)


def resume(root: Path, work: Path, overrides: list[str]) -> None:
    extra = ["trainer.max_epochs=3", *overrides]
    whole = run(root, work / "whole", extra)
    original = AVSLitModule.on_train_epoch_start

    def crash_at_epoch_2(self):
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")
        original(self)

    AVSLitModule.on_train_epoch_start = crash_at_epoch_2
    try:
        run(root, work / "crashed", extra)
    except RuntimeError as error:
        print(f"crashed run: {error}")
    AVSLitModule.on_train_epoch_start = original
    last = work / "crashed" / "checkpoints" / "last.ckpt"
    resumed = run(root, work / "resumed", [*extra, f"ckpt_path={last}"])
    table(("uninterrupted", "resumed after epoch 1"), [whole, resumed])
    print("identical in every metric:", whole == resumed)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("ddp", "resume"):
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as scratch:
        root, work = Path(scratch) / "data", Path(scratch) / "runs"
        generate(task="ms3", out=root, videos=20, seed=3, size=64)
        {"ddp": ddp, "resume": resume}[argv[0]](root, work, argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
