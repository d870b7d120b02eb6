"""The GPU acceptance check: ``python -m avsac_lit.gpu_check [--out DIR]`` (``make gpu-check``).

On a CUDA machine, in minutes, it measures and writes ``gpu_check.json`` and ``gpu_check.md``:

* **parity**: AVSegFormer's and AVSAC's forward in float64 on the GPU against the CPU's, the same
  weights and inputs (eval mode): the largest difference of any output, passing at 1e-6;
* **training steps** at the paper's scale (AVSAC MS3 512 px batch 4, AVSegFormer S4 512 px batch
  2), the frozen encoders from the feature cache and without it, in ``32-true``, ``bf16-mixed``
  and ``16-mixed`` (the three stepped in turn, :class:`~avsac_lit.profiling.steps.Stepper`):
  median step time, clips per second, the step's CUDA peak memory, and the first step's loss
  difference from ``32-true`` (the same initial weights and batch);
* **compile**: ``compile=true`` against eager, stepped in turn
  (:func:`~avsac_lit.profiling.steps.time_steps`): step time ratio, the compiling first step, the
  first-step loss difference;
* **DDP**, with two or more GPUs: two processes (NCCL) against one with the summed batch, in
  float64: the first step's loss and gradients (to 1e-10) and the validation metrics (to 1e-6:
  their states are float32), and
  whether SyncBatchNorm was on.

Without CUDA it says so in one line and exits 0. ``--device cpu --small`` runs the same code on
the CPU at tiny sizes (gloo and ``trainer=ddp_sim`` for the DDP part): the tests' way through it.
docs/performance.md, "On a GPU", says what each figure means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

# The paper's scale; ``--small`` swaps in the tiny synthetic models (same code, seconds on a CPU).
MODELS = {
    "AVSAC, MS3, 512 px, batch 4": ["+experiment=ms3", "data.img_size=512",
                                     "data.train_batch_size=4"],
    "AVSegFormer, S4, 512 px, batch 2": ["+experiment=s4", "+setting=avsegformer",
                                          "data.img_size=512", "data.train_batch_size=2"],
}  # fmt: skip
TINY = ["backbone=tiny", "data.img_size=32", "data.train_batch_size=2"]
SMALL_MODELS = {
    "AVSAC (tiny), MS3": ["+experiment=synthetic_ms3", *TINY, "model.net.dim=32",
                          "model.net.decoder_layers=1", "model.net.hidden_dim=64"],
    "AVSegFormer (tiny), MS3": ["+experiment=synthetic_ms3", "+setting=avsegformer_small", *TINY],
}  # fmt: skip
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
PARITY_TOLERANCE = 1e-6
DDP_TOLERANCE = 1e-10  # the first step's loss and gradients, float64
# The metrics' states are float32 (the protocol's), summed over processes in another order.
DDP_METRIC_TOLERANCE = 1e-6


def bench_config(overrides: list[str], device: str):
    from avsac_lit.run.assemble import compose_config

    on_device = ["trainer.accelerator=cpu"] if device == "cpu" else []
    return compose_config("bench", [*overrides, *on_device])


def float_tensors(value) -> Iterator[torch.Tensor]:
    """Every floating-point tensor in a model's output (dicts, lists and tuples of them)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from float_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from float_tensors(item)


def parity(models: dict[str, list[str]], device: torch.device) -> list[dict]:
    """Each model's float64 forward on ``device`` against the CPU's (eval mode, one clip)."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from avsac_lit.profiling.steps import TASK_SHAPES, training_batch

    rows = []
    for name, overrides in models.items():
        cfg = bench_config([*overrides, "model.feature_cache.enabled=false"], "cpu")
        with open_dict(cfg):
            cfg.model.num_classes = TASK_SHAPES[cfg.data.task][0]
        torch.manual_seed(cfg.seed)
        net = instantiate(cfg.model).net.double().eval()
        batch = training_batch(cfg.data.task, 1, cfg.data.img_size, torch.device("cpu"))
        inputs = [batch["frames"].double(), batch["audio"].double(), batch["frame_valid"]]
        with torch.no_grad():
            on_cpu = list(float_tensors(net(*inputs)))
            net.to(device)
            there = list(float_tensors(net(*(x.to(device) for x in inputs))))
        pairs = zip(on_cpu, there, strict=True)
        difference = max((a - b.cpu()).abs().max().item() for a, b in pairs)
        rows.append({
            "model": name, "outputs": len(on_cpu), "max_abs_difference": difference,
            "passed": difference <= PARITY_TOLERANCE,
        })  # fmt: skip
    return rows


def training_steps(models: dict[str, list[str]], device: str, steps: int) -> list[dict]:
    """Each model with and without the feature cache, in each precision, stepped in turn."""
    from avsac_lit.profiling.steps import Stepper

    rows = []
    for name, overrides in models.items():
        for cached in (True, False):
            with tempfile.TemporaryDirectory() as cache_root:
                steppers = {}
                for precision in PRECISIONS:
                    cfg = bench_config([*overrides, f"model.feature_cache.enabled={cached}",
                                        f"trainer.precision={precision}"], device)  # fmt: skip
                    torch.manual_seed(cfg.seed)
                    steppers[precision] = Stepper(cfg, Path(cache_root), torch.device(device))
                for round_ in range(1 + steps):  # the first fills the cache, untimed
                    for stepper in steppers.values():
                        if round_ == 0:
                            torch.manual_seed(stepper.cfg.seed)
                        stepper.step(record=round_ > 0)
                first = steppers["32-true"].losses[0]
                for precision, stepper in steppers.items():
                    step = stepper.medians()["step"]
                    rows.append({
                        "model": name, "encoders": "feature cache" if cached else "computed",
                        "precision": precision, "step_s": round(step, 4),
                        "clips_per_s": round(stepper.cfg.data.train_batch_size / step, 2),
                        "peak_memory_gb": round(stepper.peak_memory / 1e9, 2),
                        "first_loss": stepper.losses[0],
                        "first_loss_difference": abs(stepper.losses[0] - first),
                    })  # fmt: skip
                del steppers
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


def compiled(models: dict[str, list[str]], device: str, steps: int) -> list[dict]:
    """``compile=true`` against eager, stepped in turn (``time_steps``)."""
    from avsac_lit.profiling.steps import time_steps

    rows = []
    for name, overrides in models.items():
        settings = [*overrides, "bench.flops=false", f"bench.steps={steps}", "bench.warmup=2"]
        eager = bench_config(settings, device)
        results = time_steps(eager, bench_config([*settings, "compile=true"], device))
        rows.append({
            "model": name, "eager_step_s": results["A"]["seconds"]["step"],
            "compiled_step_s": results["B"]["seconds"]["step"],
            "compiled_over_eager": results["ratio_b_over_a"]["step"],
            "compiling_first_step_s": results["B"]["warmup_seconds"][0],
            "first_loss_difference": results["first_loss_difference"],
        })  # fmt: skip
    return rows


def ddp(device: str, root: Path) -> dict:
    """Two processes against one with their summed batch: the tiny synthetic model in float64,
    dropout off, two steps (``trainer=ddp`` on GPUs, NCCL; ``trainer=ddp_sim`` on the CPU)."""
    common = [
        "+experiment=synthetic_ms3", f"data.root={root / 'data'}",
        "++data.synthetic={videos:20,seed:3,size:64}", *TINY[:2], "model.net.dim=32",
        "model.net.decoder_layers=1", "model.net.hidden_dim=64", "model.net.dropout=0.0",
        "trainer.precision=64-true", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "data.eval_batch_size=1", "trainer.num_sanity_val_steps=0", "test=false",
        "logger=csv", "~callbacks.overlays", "~callbacks.rich_progress_bar",
        "extras.print_config=false", "model.feature_cache.enabled=false",
        "+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder",
    ]  # fmt: skip
    runs = {
        "two processes": (["trainer=ddp_sim"] if device == "cpu" else ["trainer=ddp"], 2),
        "one process": (["trainer=cpu"] if device == "cpu" else ["trainer=gpu"], 4),
    }
    records, steps = {}, {}
    for name, (trainer, batch) in runs.items():
        folder = root / name.replace(" ", "_")
        command = [
            sys.executable, "-m", "avsac_lit.train", *common, *trainer,
            f"data.train_batch_size={batch}", f"+callbacks.first_step.path={folder}.pt",
            f"hydra.run.dir={folder}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
        records[name] = json.loads((folder / "metrics.json").read_text())
        steps[name] = torch.load(f"{folder}.pt")
    two, one = steps["two processes"], steps["one process"]
    gradients = max(
        (two["gradients"][n] - g).abs().max().item() for n, g in one["gradients"].items()
    )
    metrics = ("val/miou", "val/f", "val/loss")
    differences = {
        m: abs(records["two processes"]["metrics"][m] - records["one process"]["metrics"][m])
        for m in metrics
    }
    loss = abs(float(two["loss"]) - float(one["loss"]))
    sync = records["two processes"].get("sync_batchnorm")
    return {
        "first_loss_difference": loss, "max_gradient_difference": gradients,
        "metric_differences": differences, "world_size": records["two processes"]["world_size"],
        "strategy": records["two processes"]["strategy"], "sync_batchnorm": sync,
        "passed": max(loss, gradients) <= DDP_TOLERANCE
        and max(differences.values()) <= DDP_METRIC_TOLERANCE
        and (sync or device == "cpu"),
    }  # fmt: skip


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    from avsac_lit.run.record import hardware

    return hardware()


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check: {report['device']}",
        "",
        f"torch {report['torch']}, CUDA {report['cuda']}, commit {report['commit']}, "
        f"{sum(report['seconds'].values()):.0f} s{' (small models)' if report['small'] else ''}"
        + (f"; not run: {', '.join(report['skipped'])}" if report["skipped"] else "")
        + ".",
        "",
        "## Parity: float64 forward on the device against the CPU",
        "",
        "| model | outputs | largest difference | within 1e-6 |",
        "|---|---|---|---|",
    ]
    for row in report.get("parity", []):
        lines.append(f"| {row['model']} | {row['outputs']} | {row['max_abs_difference']:.2e} | "
                     f"{'yes' if row['passed'] else 'NO'} |")  # fmt: skip
    lines += ["", "## Training steps", "",
              "| model | encoders | precision | step (s) | clips/s | peak memory (GB) | "
              "first loss - 32-true's |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in report.get("training_steps", []):
        lines.append(
            f"| {row['model']} | {row['encoders']} | {row['precision']} | {row['step_s']:.4f} | "
            f"{row['clips_per_s']} | {row['peak_memory_gb']} | {row['first_loss_difference']:.2e} |"
        )
    lines += ["", "## torch.compile against eager", "",
              "| model | eager step (s) | compiled step (s) | compiled / eager "
              "| compiling step (s) | first loss difference |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in report.get("compile", []):
        lines.append(
            f"| {row['model']} | {row['eager_step_s']:.4f} | {row['compiled_step_s']:.4f} | "
            f"{row['compiled_over_eager']} | {row['compiling_first_step_s']:.1f} | "
            f"{row['first_loss_difference']:.2e} |"
        )
    lines += ["", "## DDP: two processes against one", ""]
    ddp_result = report.get("ddp", {"skipped": "Not run (--skip)."})
    if "skipped" in ddp_result:
        lines.append(ddp_result["skipped"])
    else:
        lines.append(
            f"{ddp_result['world_size']} processes ({ddp_result['strategy']}), SyncBatchNorm "
            f"{'on' if ddp_result['sync_batchnorm'] else 'off'}: first-step loss difference "
            f"{ddp_result['first_loss_difference']:.2e}, gradients "
            f"{ddp_result['max_gradient_difference']:.2e}, metrics "
            + ", ".join(f"{k} {v:.2e}" for k, v in ddp_result["metric_differences"].items())
            + f": {'passed' if ddp_result['passed'] else 'FAILED'}."
        )
    return "\n".join(lines) + "\n"


SECTIONS = ("parity", "training_steps", "compile", "ddp")


def check(device: str, small: bool, out: Path, steps: int, skip: tuple[str, ...] = ()) -> dict:
    from avsac_lit.run.record import source_version

    models = SMALL_MODELS if small else MODELS
    report = {
        "device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "commit": source_version(), "small": small, "skipped": list(skip), "seconds": {},
    }  # fmt: skip
    for section in SECTIONS:
        if section in skip:
            continue
        started = time.perf_counter()
        if section == "parity":
            report[section] = parity(models, torch.device(device))
        elif section == "training_steps":
            report[section] = training_steps(models, device, steps)
        elif section == "compile":
            report[section] = compiled(models, device, steps)
        elif device == "cpu" or torch.cuda.device_count() >= 2:
            with tempfile.TemporaryDirectory() as folder:
                report[section] = ddp(device, Path(folder))
        else:
            report[section] = {"skipped": "One GPU: the DDP comparison needs two or more."}
        report["seconds"][section] = round(time.perf_counter() - started, 1)
    report["passed"] = all(r["passed"] for r in report.get("parity", [])) and report.get(
        "ddp", {}
    ).get("passed", True)
    out.mkdir(parents=True, exist_ok=True)
    from avsac_lit.storage.atomic import atomic_path

    for name, text in (("gpu_check.json", json.dumps(report, indent=2) + "\n"),
                       ("gpu_check.md", markdown(report))):  # fmt: skip
        with atomic_path(out / name) as partial:
            partial.write_text(text)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for gpu_check.json and .md (default logs/gpu_check/<time>)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu runs the same code on the CPU (with --small: the tests)",
    )
    parser.add_argument("--small", action="store_true", help="tiny models instead of the paper's")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=SECTIONS, help="sections not to run"
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"GPU check: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}), so nothing was measured; run `make gpu-check` "
              "on a machine with a GPU.")  # fmt: skip
        return 0
    out = args.out or Path("logs/gpu_check") / time.strftime("%Y-%m-%d_%H-%M-%S")
    report = check(args.device, args.small, out, args.steps, tuple(args.skip))
    print(markdown(report))
    print(f"Written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
