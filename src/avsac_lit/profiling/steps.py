"""A training step timed part by part, for any composed training config: what
``python -m avsac_lit.bench`` prints and ``python -m avsac_lit.gpu_check`` measures.

:class:`Stepper` builds a config's model and optimiser (weights from its weight files, or the fixed
random init), feeds it random inputs shaped like the task's training batches (S4: only frame 1
labelled) and times training steps: per part (encoders: the visual backbone and VGGish, or the
feature cache standing in for them; decoder; mask head; loss; backward; optimiser), with the
step's peak memory (CUDA's allocator on a GPU, less what other configs in the process hold; the
peak resident set of the process on the CPU). :func:`time_steps` steps one config, or two in turn
(A, B, A, B, ...) so that a noisy machine slows both alike, and adds clips per second, FLOPs
(torch's FlopCounterMode; a multiply-add counts 2) and the machine's matmul peak.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avsac_lit.system.frames import frames_to_compute
from avsac_lit.system.module import AVSLitModule

log = logging.getLogger(__name__)

PARTS = ("encoders", "decoder", "mask head", "loss", "backward", "optimiser")
TASK_SHAPES = {"s4": (1, 5), "ms3": (1, 5), "avss": (71, 10)}  # (classes, frames per clip)
PRECISIONS = {
    "32": None, "32-true": None, "64": torch.float64, "64-true": torch.float64,
    "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16,
}  # fmt: skip


def training_batch(task: str, clips: int, img_size: int, device: torch.device) -> dict:
    """Random inputs shaped like a training batch of ``task`` (S4: the first frame labelled)."""
    classes, frames = TASK_SHAPES[task]
    generator = torch.Generator().manual_seed(0)
    mask_valid = torch.ones(clips, frames, dtype=torch.bool)
    if task == "s4":
        mask_valid[:, 1:] = False
    masks = torch.randint(0, max(classes, 2), (clips, frames, img_size, img_size),
                          generator=generator)  # fmt: skip
    batch = {
        "frames": torch.randn(clips, frames, 3, img_size, img_size, generator=generator),
        "audio": torch.randn(clips, frames, 1, 96, 64, generator=generator),
        "masks": masks.float() if classes == 1 else masks,
        "mask_valid": mask_valid,
        "frame_valid": torch.ones(clips, frames, dtype=torch.bool),
        "name": [f"clip{i}" for i in range(clips)],
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def peak_rss_reset() -> None:
    """Reset the process's peak resident set (Linux: ``5`` into clear_refs)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Stepper:
    """One config's module, optimiser and batch, stepped and timed part by part."""

    def __init__(self, cfg: DictConfig, cache_root: Path, device: torch.device) -> None:
        self.cfg = cfg
        task = cfg.data.task
        if task not in TASK_SHAPES:
            raise ValueError(f"data.task={task}; expected one of {', '.join(TASK_SHAPES)}.")
        precision = str(cfg.trainer.get("precision", "32-true"))
        if precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision={precision}; the benchmark runs {', '.join(PRECISIONS)}."
            )
        self.device, self.precision = device, precision
        with open_dict(cfg):
            cfg.model.num_classes = TASK_SHAPES[task][0]
            if cfg.model.get("feature_cache"):
                cfg.model.feature_cache.root = str(cache_root)
        self.module: AVSLitModule = instantiate(cfg.model).to(device).train()
        if PRECISIONS[precision] is torch.float64:
            self.module.double()
        if cfg.get("compile"):
            self.module.net.compile()
        if self.module.feature_cache is not None:
            self.module.feature_cache.bind(self.module.net)
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = self.module.optimizer_factory(params=trainable)
        self.batch = training_batch(task, cfg.data.train_batch_size, cfg.data.img_size, device)
        if PRECISIONS[precision] is torch.float64:
            self.batch = {
                k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in self.batch.items()
            }
        self.times: dict[str, list[float]] = {part: [] for part in (*PARTS, "step")}
        # Whole-step seconds of the untimed warm-up steps: compile=true compiles in the first.
        self.warmup_times: list[float] = []
        self.peak_memory = 0
        self.losses: list[float] = []

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def part_modules(self) -> dict[str, list[nn.Module]]:
        net = self.module.net
        head = [net.mask_feature, net.head.mlp, net.head.to_mask]
        if hasattr(net, "mixer"):
            head.append(net.mixer)
        return {"encoders": [net.visual, net.audio.vggish], "mask head": head}

    @contextmanager
    def timed_modules(self, spent: dict[str, float]):
        """Adds the time spent in each part's modules (and the feature cache) to ``spent``."""
        started: dict[int, float] = {}
        handles = []

        def before(module, *_):
            self.sync()
            started[id(module)] = time.perf_counter()

        def after(part):
            def hook(module, *_):
                self.sync()
                spent[part] += time.perf_counter() - started.pop(id(module))

            return hook

        for part, modules in self.part_modules().items():
            for module in modules:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after(part)))
        cache = self.module.feature_cache
        original = cache.outputs if cache is not None else None
        if cache is not None:

            def cached(*args, **kwargs):
                self.sync()
                start = time.perf_counter()
                # Encoders run on cache misses: their hooks count them, so do not count twice.
                before_inside = spent["encoders"]
                result = original(*args, **kwargs)
                self.sync()
                inside = spent["encoders"] - before_inside
                spent["encoders"] += time.perf_counter() - start - inside
                return result

            cache.outputs = cached
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            if cache is not None:
                cache.outputs = original

    def frames_to_compute(self) -> dict:
        """The batch with the frames the module's training step computes."""
        module = self.module
        skip = module.hparams.skip_unread_frames
        return frames_to_compute(self.batch, module.net, module.criterion, skip)

    def step(self, record: bool = True) -> None:
        """One training step (the module's frame selection, forward, loss, backward, optimiser)."""
        spent = dict.fromkeys(PARTS, 0.0)
        if self.device.type == "cuda":
            # The step's own peak: other configs stepped in the same process keep their weights
            # on the GPU, which max_memory_allocated would count too.
            before = torch.cuda.memory_allocated(self.device) - self.resident_bytes()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            peak_rss_reset()
        self.sync()
        start = time.perf_counter()
        with self.timed_modules(spent):
            batch = self.frames_to_compute()
            with self.autocast():
                outputs = self.module.cached_forward(
                    batch["frames"], batch["audio"], batch["frame_valid"]
                )
                self.sync()
                forward_end = time.perf_counter()
                losses = self.module.criterion(outputs, batch)
                self.sync()
            loss_end = time.perf_counter()
        losses["loss"].backward()
        self.sync()
        backward_end = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        end = time.perf_counter()
        self.losses.append(losses["loss"].item())
        if not record:
            self.warmup_times.append(end - start)
            return
        forward = forward_end - start
        spent["decoder"] = forward - spent["encoders"] - spent["mask head"]
        spent["loss"] = loss_end - forward_end
        spent["backward"] = backward_end - loss_end
        spent["optimiser"] = end - backward_end
        spent["step"] = end - start
        for part, seconds in spent.items():
            self.times[part].append(seconds)
        memory = (
            torch.cuda.max_memory_allocated(self.device) - before
            if self.device.type == "cuda"
            else peak_rss_bytes()
        )
        self.peak_memory = max(self.peak_memory, memory)

    def resident_bytes(self) -> int:
        """Bytes this config keeps on its device between steps: weights, buffers, optimiser
        state and the batch."""
        tensors = [*self.module.parameters(), *self.module.buffers(), *self.batch.values()]
        for state in self.optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        unique = {t.data_ptr(): t for t in tensors if isinstance(t, torch.Tensor)}
        # By type: a tensor on "cuda:0" is not on torch.device("cuda") by ==.
        on_device = (t for t in unique.values() if t.device.type == self.device.type)
        return sum(t.numel() * t.element_size() for t in on_device)

    def step_flops(self) -> int:
        """FLOPs of one training step (forward, loss and backward; the optimiser's are
        elementwise and not counted)."""
        counter = FlopCounterMode(display=False)
        with counter:
            batch = self.frames_to_compute()
            with self.autocast():
                outputs = self.module.cached_forward(
                    batch["frames"], batch["audio"], batch["frame_valid"]
                )
                loss = self.module.criterion(outputs, batch)["loss"]
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def medians(self) -> dict[str, float]:
        return {part: statistics.median(values) for part, values in self.times.items()}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5):
    """GFLOP/s of the best of ``repeats`` square matmuls: the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def describe(cfg: DictConfig) -> str:
    return (
        f"{cfg.model.name} / {cfg.backbone.name} / {cfg.data.task}, {cfg.data.img_size} px, "
        f"batch {cfg.data.train_batch_size}, {cfg.trainer.get('precision', '32-true')}"
        + (", compiled" if cfg.get("compile") else "")
    )


def time_steps(cfg: DictConfig, compared: DictConfig | None) -> dict:
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    )
    configs = {"A": cfg} if compared is None else {"A": cfg, "B": compared}
    with ExitStack() as stack:
        steppers = {}
        for name, config in configs.items():
            cache_root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            torch.manual_seed(config.seed)
            steppers[name] = Stepper(config, cache_root, device)
        for round_ in range(cfg.bench.warmup + cfg.bench.steps):
            for stepper in steppers.values():
                if round_ == 0:  # the first steps draw the same dropout masks
                    torch.manual_seed(stepper.cfg.seed)
                stepper.step(record=round_ >= cfg.bench.warmup)
        flops = {n: s.step_flops() for n, s in steppers.items()} if cfg.bench.flops else {}
    dtype = PRECISIONS[str(cfg.trainer.get("precision", "32-true"))] or torch.float32
    peak = matmul_peak(device, dtype)
    results = {}
    for name, stepper in steppers.items():
        medians = stepper.medians()
        result = {
            "config": describe(stepper.cfg),
            "seconds": {k: round(v, 4) for k, v in medians.items()},
            "clips_per_s": round(stepper.cfg.data.train_batch_size / medians["step"], 3),
            "peak_memory_gb": round(stepper.peak_memory / 1e9, 2),
            "warmup_seconds": [round(t, 3) for t in stepper.warmup_times],
            # The first on the initial weights, which both configs share (same seed); later ones
            # follow diverging updates (AdamW magnifies rounding where gradients are ~0).
            "losses": stepper.losses,
        }
        if name in flops:
            # Achieved over forward, loss and backward: the optimiser's elementwise work is not
            # counted by the flop counter, so its time is not charged either.
            counted = medians["step"] - medians["optimiser"]
            result["gflop"] = round(flops[name] / 1e9, 2)
            result["gflop_per_s"] = round(flops[name] / counted / 1e9, 1)
        results[name] = result
    results["matmul_peak_gflop_per_s"] = round(peak, 1)
    results["device"] = str(device)
    results["threads"] = torch.get_num_threads()
    if compared is not None:
        first = [results[name]["losses"][0] for name in ("A", "B")]
        results["first_loss_difference"] = abs(first[0] - first[1])
        results["ratio_b_over_a"] = {
            part: round(results["B"]["seconds"][part] / results["A"]["seconds"][part], 3)
            if results["A"]["seconds"][part] > 0
            else None
            for part in (*PARTS, "step")
        }
    return results
