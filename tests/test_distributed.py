"""Several processes train and score as one does (docs/bad_inputs.md, DDP rows): the samplers give
each process its share of the single-process batches, BatchNorm statistics span the processes, and
``trainer=ddp_sim`` (2 CPU processes) matches ``trainer=cpu`` at the same effective batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from avsac_lit.data import samplers
from avsac_lit.data.samplers import EvalSampler, TrainSampler
from avsac_lit.models.batchnorm import DistributedBatchNorm1d
from avsac_lit.train import train
from tests.helpers import tiny_run


def rank_indices(sampler, processes: int, monkeypatch) -> list[list[int]]:
    """Each simulated process's indices, in order."""
    indices = []
    for rank in range(processes):
        monkeypatch.setattr(samplers, "process_layout", lambda rank=rank: (processes, rank))
        indices.append(list(sampler))
    return indices


@pytest.mark.parametrize("clips", [20, 23, 9])
def test_the_processes_of_a_step_see_the_single_process_batch(clips, monkeypatch):
    single = TrainSampler(clips, batch_size=4, seed=5)
    single.set_epoch(3)
    (order,) = rank_indices(single, 1, monkeypatch)
    assert sorted(order) == list(range(clips))  # every clip once per epoch
    one_process = [order[i : i + 4] for i in range(0, clips, 4)]

    shared = TrainSampler(clips, batch_size=2, seed=5)
    shared.set_epoch(3)
    first, second = rank_indices(shared, 2, monkeypatch)
    steps = [first[i : i + 2] + second[i : i + 2] for i in range(0, len(first), 2)]
    full = [batch for batch in one_process if len(batch) == 4]
    assert steps[: len(full)] == full
    # A last batch of 3 clips trains 1 + 1 of them on two processes; 1 clip: none.
    assert len(first) == len(second) == 2 * len(full) + (clips % 4) // 2
    other_epoch = TrainSampler(clips, batch_size=4, seed=5)
    assert rank_indices(other_epoch, 1, monkeypatch)[0] != order  # epoch 0: another order


def test_a_resumed_epoch_skips_the_batches_already_trained(monkeypatch):
    sampler = TrainSampler(20, batch_size=4, seed=1)
    (whole,) = rank_indices(sampler, 1, monkeypatch)
    sampler.skip_batches(3)
    assert list(sampler) == whole[12:]
    assert list(sampler) == whole  # only the next epoch is shortened


@pytest.mark.parametrize(("clips", "processes"), [(9, 2), (10, 3), (7, 1)])
def test_evaluation_scores_every_clip_once_in_the_single_process_batches(
    clips, processes, monkeypatch
):
    sampler = EvalSampler(clips, batch_size=2)
    per_rank = rank_indices(sampler, processes, monkeypatch)
    batches = [
        (rank, local, indices[i : i + 2])
        for rank, indices in enumerate(per_rank)
        for local, i in enumerate(range(0, len(indices), 2))
    ]
    single = [list(range(clips))[i : i + 2] for i in range(0, clips, 2)]
    # Each process's batch b is the single process's batch b * processes + rank.
    assert sorted((local * processes + rank, batch) for rank, local, batch in batches) == list(
        enumerate(single)
    )
    assert sum(map(len, per_rank)) == clips  # no padded repeats


def test_evaluation_refuses_more_processes_than_batches(monkeypatch):
    monkeypatch.setattr(samplers, "process_layout", lambda: (4, 3))
    with pytest.raises(ValueError, match=r"3 batches of data.eval_batch_size=2, fewer than the 4"):
        len(EvalSampler(5, batch_size=2))


def _batchnorm_worker(rank: int, init_file: str, inputs: torch.Tensor, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = DistributedBatchNorm1d(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = inputs[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
    out = norm(x)
    (out.square() * torch.arange(1.0, 9.0)).mean().backward()
    for parameter in norm.parameters():  # what DDP does with the gradients
        dist.all_reduce(parameter.grad)
        parameter.grad /= 2
    torch.save(
        {"out": out.detach(), "grad_x": x.grad, "grad_w": norm.weight.grad,
         "running_var": norm.running_var},
        Path(out_dir) / f"rank{rank}.pt",
    )  # fmt: skip
    dist.destroy_process_group()


def test_batchnorm_statistics_span_the_processes(tmp_path):
    inputs = torch.randn(6, 8) * 3 + 1
    # Spawned, not forked: a forked child of a pytest worker that earlier tests left with
    # threads (wandb's) can inherit a held lock and hang.
    mp.spawn(_batchnorm_worker, args=(str(tmp_path / "init"), inputs, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = inputs.clone().requires_grad_(True)
    out = norm(x)
    # Each process's loss is the mean over its half; DDP averages the two.
    (out.square() * torch.arange(1.0, 9.0)).mean().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out, atol=1e-6, rtol=0)
    # Input gradients: each process holds d(its loss)/dx; on one process the loss is their mean.
    torch.testing.assert_close(
        torch.cat([r["grad_x"] for r in ranks]) / 2, x.grad, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(ranks[0]["grad_w"], norm.weight.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ranks[1]["running_var"], norm.running_var, atol=1e-6, rtol=0)


def test_ddp_on_two_processes_trains_and_scores_as_one_process(trained_runs, tmp_path):
    """Same effective batch (2 clips x 2 processes against 4 x 1), dropout off (each process
    draws its own masks), in float64 so that the comparison is of the arithmetic, not of float32
    rounding (which leaves about 1e-6: docs/bad_inputs.md): the first step's loss and gradients
    agree to 1e-10, and after two epochs of two steps the validation and test scores, with the
    true audio and with another clip's, to the rounding of their float32 states (3 clips each,
    one per batch: one process evaluates two batches, the other one, and no clip is repeated; a
    check that all processes took together batch by batch once hung there)."""
    data = trained_runs.parent / "data"
    results = {}
    for name, trainer, batch in (("cpu", "cpu", 4), ("ddp", "ddp_sim", 2)):
        record = tmp_path / f"{name}_step.pt"
        extra = [
            f"trainer={trainer}", f"data.train_batch_size={batch}", "trainer.max_epochs=2",
            "trainer.limit_train_batches=2", "data.eval_batch_size=1",
            "model.net.dropout=0.0", "~callbacks.overlays", "logger=csv",
            "test_audio=[matched,shuffled]", "trainer.precision=64-true",
            "+callbacks.first_step._target_=avsac_lit.run.callbacks.FirstStepRecorder",
            f"+callbacks.first_step.path={record}", "++data.synthetic={videos:20,seed:3,size:64}",
        ]  # fmt: skip
        metrics = train(tiny_run("ms3", data, tmp_path / name, extra))
        record_file = json.loads((tmp_path / name / "metrics.json").read_text())
        results[name] = (metrics, record_file, torch.load(record))
    (cpu, cpu_file, cpu_step), (ddp, ddp_file, ddp_step) = results["cpu"], results["ddp"]
    assert abs(ddp_step["loss"] - cpu_step["loss"]) < 1e-10
    assert ddp_step["gradients"].keys() == cpu_step["gradients"].keys()
    difference = max(
        (ddp_step["gradients"][n] - g).abs().max().item() for n, g in cpu_step["gradients"].items()
    )
    assert difference < 1e-10
    assert ddp_file["epochs_trained"] == cpu_file["epochs_trained"] == 2
    # The float64 VGGish is the float32 one its config builds: left out of the checkpoints
    # (it made them 591 MB before 0.7.0; 14 MB without it), and rebuilt for the test
    # conditions above.
    last = torch.load(tmp_path / "cpu" / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(last["avsac_lit"]["rebuilt_encoders"]) == ["net.audio.vggish"]
    assert (tmp_path / "cpu" / "checkpoints" / "last.ckpt").stat().st_size < 50 * 2**20
    # ddp_spawn's main process writes the test rows after a worker wrote the training rows.
    header = (tmp_path / "ddp" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/miou", "test/miou", "train/miou"} <= set(header)
    # Both conditions are scored in one test call, each in its own metric states; under
    # ddp_spawn the test's processes start from the main process's module, which once carried
    # metric states from one call into the next.
    scored = ("val/miou", "val/f", "val/miou_best", "test/miou", "test/f", "test/f_pooled",
              "test_shuffled/miou", "test_shuffled/f")  # fmt: skip
    for name in scored:
        # The scores' states are float32 (the protocol's), summed in another order over processes.
        assert ddp[name] == pytest.approx(cpu[name], rel=1e-6, abs=0), name
