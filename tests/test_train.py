"""The training suite end to end: configs compose, runs train, test, resume and evaluate."""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avsac_lit.checkpoints.versions import upgraded
from avsac_lit.eval import evaluate
from avsac_lit.eval import main as eval_main
from avsac_lit.models.avsac import AVSAC
from avsac_lit.run.assemble import build_module, build_run
from avsac_lit.run.exact_state import ExactResume
from avsac_lit.run.loggers import wandb_offline_unless_reachable
from avsac_lit.system.guards import NonFiniteGuard
from avsac_lit.system.module import MONITOR, AVSLitModule
from avsac_lit.train import main as train_main
from avsac_lit.train import train
from tests.helpers import EXPERIMENTS, compose_config, eval_run, tiny_run


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", [f"+experiment={experiment}"], tmp_path)
    assert cfg.group == experiment
    assert cfg.data.task == experiment.removeprefix("synthetic_")
    assert cfg.callbacks.model_checkpoint.monitor == MONITOR
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize(
    ("experiment", "epochs", "img_size", "tokens"),
    [("s4", 30, 512, 5376), ("ms3", 60, 512, 5376), ("avss", 30, 224, 1029)],
)
def test_paper_experiments_use_the_paper_settings(experiment, epochs, img_size, tokens, tmp_path):
    cfg = compose_config("train", [f"+experiment={experiment}"], tmp_path)
    assert cfg.trainer.max_epochs == epochs
    assert cfg.data.img_size == img_size and cfg.data.train_batch_size == 4
    assert sum((img_size // s) ** 2 for s in (8, 16, 32)) == tokens
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW" and cfg.model.optimizer.lr == 2e-5
    assert cfg.model.net.decoder_layers == 6 and cfg.backbone.name == "pvt_v2_b5"
    assert cfg.seed == 123


@pytest.mark.parametrize(
    ("experiment", "batch", "unfreeze_at", "avss_seg"),
    [("s4", 2, 5, "ce"), ("ms3", 2, 10, "ce"), ("avss", 4, 0, "ce")],
)
def test_the_avsegformer_setting_is_the_official_recipe(
    experiment, batch, unfreeze_at, avss_seg, tmp_path
):
    cfg = compose_config("train", [f"+experiment={experiment}", "+setting=avsegformer"], tmp_path)
    assert cfg.model.name == "avsegformer" and cfg.model.optimizer.lr == 2e-5
    assert cfg.data.train_batch_size == cfg.data.eval_batch_size == batch
    assert cfg.callbacks.unfreeze_backbone.epochs == unfreeze_at
    assert cfg.backbone.eval_when_frozen is False and cfg.backbone.drop_path_rate == 0.1
    loss = cfg.model.loss
    assert (loss.seg, loss.avss_seg, loss.sync, loss.mix_weight) == ("dice", avss_seg, "none", 0.1)
    # AVSAC keeps the paper's: batch 4, frozen encoders in eval mode, no backbone schedule.
    avsac = compose_config("train", [f"+experiment={experiment}"], tmp_path)
    assert avsac.data.train_batch_size == 4 and avsac.backbone.eval_when_frozen is True
    assert "unfreeze_backbone" not in avsac.callbacks


def test_the_twin_baseline_has_the_official_batch_and_the_twins_frozen_encoder(tmp_path):
    """The baseline of Table 2's twin has the official batch and, as every row of the twins since
    issue 40, the frozen pretrained tiny PVT (no unfreezing: both decoders on one encoder)."""
    cfg = compose_config(
        "train", ["+table=synthetic_table2", "setting=avsegformer_small"], tmp_path
    )
    assert cfg.model.name == "avsegformer" and cfg.data.train_batch_size == 2
    assert cfg.callbacks.unfreeze_backbone is None
    assert cfg.backbone.freeze is True and cfg.backbone.pretrained is True


def test_debug_config_appended_after_the_experiment_wins(tmp_path):
    cfg = compose_config("train", ["+experiment=ms3", "+debug=fdr"], tmp_path)
    assert cfg.trainer.fast_dev_run is True
    assert cfg.logger is None and cfg.callbacks is None
    assert cfg.data.num_workers == 0


def test_a_debug_run_keeps_the_callbacks_every_run_needs(synth_trees, tmp_path):
    """``+debug=...`` sets ``callbacks: null``; the non-finite guard and the exact resume are not
    config callbacks, so a debug run has them too."""
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["+debug=fdr"])
    assert cfg.callbacks is None
    _, _, trainer = build_run(cfg, callbacks=cfg.get("callbacks"))
    assert {NonFiniteGuard, ExactResume} <= {type(callback) for callback in trainer.callbacks}


def test_missing_avsbench_stops_with_the_download_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSAC_ROOT", str(tmp_path))
    cfg = compose_config("train", ["+experiment=ms3", "+debug=fdr"], tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="OpenNLPLab/AVSBench"):
        train(cfg)


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_fast_dev_run_trains_tests_and_writes_metrics(task, synth_trees, tmp_path):
    cfg = tiny_run(task, synth_trees[task], tmp_path, ["+debug=fdr", "test_audio=[matched,silent]"])
    metrics = train(cfg)
    for stage in ("train", "val", "test", "test_silent"):
        assert 0.0 <= metrics[f"{stage}/miou"] <= 1.0
    assert "test/f_pooled" in metrics if task != "avss" else "test/f" in metrics
    assert MONITOR in metrics and "train/loss" in metrics and "train/sync" in metrics
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["metrics"]["test/miou"] == pytest.approx(metrics["test/miou"])
    assert record["task"] == task and record["model"] == "avsac"
    config = OmegaConf.load(tmp_path / "config.yaml")
    assert config.model.num_classes == (11 if task == "avss" else 1)
    table = (tmp_path / "demo_results.md").read_text()
    assert "| true audio |" in table and "| silence |" in table and "vision only" in table
    assert "another clip" not in table


def test_train_then_eval_gives_the_same_test_metrics(synth_trees, tmp_path):
    run = tmp_path / "train"
    # The tree's own generator settings: the checkpoint then records a synthetic data config.
    synthetic = "++data.synthetic={videos:8,seed:7,size:64}"
    limits = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=csv", synthetic]
    trained = train(tiny_run("ms3", synth_trees["ms3"], run, limits))
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    assert Path(best).is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()

    # The tiny model's overrides are not repeated: the checkpoint's config rebuilds the model.
    evaluated = evaluate(eval_run(Path(best), tmp_path / "eval"))
    for name in ("test/miou", "test/f", "test/f_pooled"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-6)
    # A DDP trainer group changes nothing: the protocol is scored on one process.
    on_ddp = evaluate(eval_run(Path(best), tmp_path / "eval_ddp", ["trainer=ddp_sim"]))
    assert on_ddp == evaluated
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(
        Path(best).resolve()
    )


def test_eval_refuses_a_missing_checkpoint(synth_trees, tmp_path):
    cfg = eval_run(tmp_path / "nowhere.ckpt", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.ckpt"):
        evaluate(cfg)


def test_a_checkpoint_config_of_version_0_1_is_read_in_todays_layout(synth_trees, tmp_path):
    today = OmegaConf.to_container(tiny_run("ms3", synth_trees["ms3"], tmp_path), resolve=True)
    old = copy.deepcopy(today)
    net = old["model"]["net"]
    bavd = {"_target_": "avsac_lit.models.bavd.BAVD", "num_layers": net.pop("decoder_layers")}
    for key in ("bridge", "agca", "vga_ffn", "heads", "hidden_dim", "dropout"):
        bavd[key] = net.pop(key)
    net["bavd"] = bavd | {"dim": net["dim"]}
    old["model"].pop("_target_")
    old["model"] |= {"bavd": net["bavd"], "dim": net["dim"]}
    upgraded_config = upgraded(OmegaConf.create(old))
    assert upgraded_config.model == OmegaConf.create(today).model
    for node in (upgraded_config.model, upgraded_config.model.net, upgraded_config.model.loss):
        node.num_classes = 1  # as the data sets it
    assert isinstance(build_module(upgraded_config).net, AVSAC)


@pytest.mark.parametrize("override", ["+experiment=ms3", "model.net.dim=64", "data.img_size=64"])
def test_eval_refuses_to_change_the_checkpoints_model(override, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["avsac_lit.eval", "ckpt_path=x.ckpt", override])
    with pytest.raises(SystemExit, match=rf"'{re.escape(override)}' cannot be overridden.*"
                       "rebuilt from the config the checkpoint carries"):  # fmt: skip
        eval_main()


def test_a_table_run_names_the_experiment_without_the_plus(monkeypatch):
    arguments = ["avsac_lit.train", "-m", "+table=table2", "+experiment=s4"]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(SystemExit, match=r"pick another with experiment=NAME, without the \+"):
        train_main()


def test_eval_refuses_an_unreadable_checkpoint_naming_it(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"Cannot read checkpoint {re.escape(str(empty))}"):
        evaluate(eval_run(empty, tmp_path / "eval"))


def test_a_trainer_count_that_is_not_a_number_stops_before_anything_is_built(synth_trees, tmp_path):
    cfg = tiny_run("ms3", synth_trees["ms3"], tmp_path, ["trainer.max_epochs=abc"])
    with pytest.raises(ValueError, match=r"trainer\.max_epochs='abc': expected a whole number"):
        train(cfg)
    assert not (tmp_path / "config.yaml").exists()  # nothing was built or written


def test_resumed_run_continues_from_its_epoch(synth_trees, tmp_path):
    limits = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"]
    first = tmp_path / "first"
    cfg = tiny_run("s4", synth_trees["s4"], first, [*limits, "trainer.max_epochs=1"])
    train(cfg)
    last = first / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0
    # Optimiser state exists for the trainable parameters only: none for the frozen VGGish.
    module = build_module(OmegaConf.load(first / "config.yaml"))
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(trainable) < len(list(module.parameters()))
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(trainable)

    second = tmp_path / "second"
    overrides = [*limits, "trainer.max_epochs=3", f"ckpt_path={last}", "logger=csv"]
    train(tiny_run("s4", synth_trees["s4"], second, overrides))
    assert json.loads((second / "metrics.json").read_text())["epochs_trained"] == 3
    with (second / "csv" / "metrics.csv").open() as file:
        epochs = {int(row["epoch"]) for row in csv.DictReader(file) if row["epoch"]}
    assert epochs == {1, 2}  # epoch 0 came from the checkpoint and was not trained again


def test_runs_log_the_audio_share_of_the_true_audio_only(trained_runs):
    for job in ("0", "1"):
        metrics = json.loads((trained_runs / job / "metrics.json").read_text())["metrics"]
        assert 0.0 < metrics["val/audio_share"] < 1.0 and 0.0 < metrics["test/audio_share"] < 1.0
        assert "test_shuffled/miou" in metrics and "test_shuffled/audio_share" not in metrics


def closed_port_url() -> str:
    """An address on this machine where nothing listens: a W&B server out of reach."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def offline_by(how: str, monkeypatch) -> None:
    """W&B offline the documented way (WANDB_MODE=offline), or as on a cluster node without
    internet: a logged-in user's run whose W&B server does not answer (wandb.init waited about
    100 s there, then stopped the run with a CommError)."""
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    if how == "WANDB_MODE=offline":
        monkeypatch.setenv("WANDB_MODE", "offline")
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)


# The server out of reach ends in the same offline run, the check before it included.
@pytest.mark.parametrize(
    "how", [pytest.param("WANDB_MODE=offline", marks=pytest.mark.slow), "server out of reach"]
)
def test_wandb_offline_run_writes_its_directory_and_finishes(
    how, synth_trees, tmp_path, monkeypatch, caplog
):
    wandb = pytest.importorskip("wandb")
    offline_by(how, monkeypatch)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING, logger="avsac_lit.run.loggers")
    cfg = tiny_run(
        "ms3", synth_trees["ms3"], tmp_path,
        ["logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"],
    )  # fmt: skip
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    overlays = list(runs[0].glob("files/media/images/val/overlays_*"))
    assert overlays, "validation overlays go to W&B as images with masks"
    assert any(runs[0].glob("files/media/images/mask/*"))  # the toggleable mask layers
    assert not (tmp_path / "overlays").exists()  # no PNG grids beside W&B
    assert wandb.run is None  # finished, so the next job of a multirun gets its own run
    warnings = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    if how == "WANDB_MODE=offline":
        assert not warnings
        return
    (warning,) = warnings
    url = os.environ["WANDB_BASE_URL"]
    assert warning.startswith(f"W&B at {url} cannot be reached from this machine (")
    assert f"wandb sync {tmp_path / 'wandb'}/offline-run-*" in warning
    assert "WANDB_MODE=offline" in warning


def test_wandb_offline_by_setting_is_not_checked_against_the_server(tmp_path, monkeypatch, caplog):
    """WANDB_MODE=offline, or the logger's offline: true: no check, no warning."""
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    caplog.set_level(logging.WARNING, logger="avsac_lit.run.loggers")
    for mode, offline in (("offline", "false"), ("", "true")):
        monkeypatch.setenv("WANDB_MODE", mode)
        cfg = compose_config("train", ["logger=wandb", f"logger.wandb.offline={offline}"], tmp_path)
        wandb_offline_unless_reachable(cfg)
        assert cfg.logger.wandb.offline is (offline == "true")
    assert not caplog.records


def test_a_resumed_run_equals_the_uninterrupted_one(synth_trees, tmp_path, monkeypatch):
    """Interrupted after epoch 1 of 3 (a crash at the start of epoch 2), then resumed from
    last.ckpt into a new directory and into its own: every metric as in the run that was never
    interrupted (its CSV log too), and the best score before the crash kept in the checkpoint."""
    # The tiny model's dropout draws from the random state, so a lost state would show.
    run = ["trainer.max_epochs=3", "trainer.limit_train_batches=3", "model.net.dropout=0.1"]
    run.append("logger=csv")
    whole = tmp_path / "whole"
    uninterrupted = train(tiny_run("ms3", synth_trees["ms3"], whole, run))

    original = AVSLitModule.on_train_epoch_start

    def crash_at_epoch_2(self):
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")
        original(self)

    monkeypatch.setattr(AVSLitModule, "on_train_epoch_start", crash_at_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_run("ms3", synth_trees["ms3"], tmp_path / "crashed", run))
    monkeypatch.setattr(AVSLitModule, "on_train_epoch_start", original)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 1
    with (whole / "csv" / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/miou")]
    before_crash = max(float(row["val/miou"]) for row in rows if int(row["epoch"]) < 2)
    assert checkpoint["state_dict"]["val_miou_best.max_value"].item() == pytest.approx(
        before_crash, abs=1e-7
    )
    for directory in ("resumed", "crashed"):  # a new directory, then the crashed run's own
        resumed = train(
            tiny_run("ms3", synth_trees["ms3"], tmp_path / directory, [*run, f"ckpt_path={last}"])
        )
        assert resumed == uninterrupted, directory  # bit-identical, val/miou_best included
        # The CSV log holds the whole history, the epochs before the crash included.
        assert csv_rows(tmp_path / directory) == csv_rows(whole), directory


def csv_rows(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(file)]


def test_a_run_resumed_mid_epoch_continues_that_epoch_and_says_so(
    synth_trees, tmp_path, caplog, monkeypatch
):
    """A checkpoint written after 2 of epoch 1's 6 batches (every_n_train_steps; Lightning
    writes none before the first validation), then a crash: the resumed run trains the other 4,
    the same ones with the same random draws as the run that was never interrupted, so it ends
    with the same weights, validation scores and (the checkpoint holds the first 2 batches'
    sums) training metrics, and says where it continues."""
    run = [
        "trainer.max_epochs=2", "data.train_batch_size=1", "model.net.dropout=0.1",
        "+callbacks.model_checkpoint.every_n_train_steps=1", "test=false",
    ]  # fmt: skip
    tree = synth_trees["ms3"]
    whole = train(tiny_run("ms3", tree, tmp_path / "whole", run))
    original = AVSLitModule.training_step

    def crash_at_the_third_batch(self, batch, batch_idx):
        if self.global_step == 8:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AVSLitModule, "training_step", crash_at_the_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_run("ms3", tree, tmp_path / "stopped", run))
    monkeypatch.setattr(AVSLitModule, "training_step", original)
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    caplog.set_level(logging.INFO, logger="avsac_lit.data.samplers")
    resumed = train(tiny_run("ms3", tree, tmp_path / "resumed", [*run, f"ckpt_path={last}"]))
    assert "in the middle of epoch 1 after 2 of its 6 batches" in caplog.text
    names = ("val/miou", "val/f", "val/loss", "val/miou_best", "train/miou", "train/f")
    for name in names:
        assert resumed[name] == whole[name], name

    def weights(run_dir: Path) -> dict:
        saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        return {k: v for k, v in saved["state_dict"].items() if k.startswith("net.")}

    expected = weights(tmp_path / "whole")
    assert all(torch.equal(v, expected[k]) for k, v in weights(tmp_path / "resumed").items())


def test_a_resume_removes_what_a_kill_left_in_the_checkpoints(synth_trees, tmp_path):
    """A kill during a checkpoint write leaves a .partial; one between writing a new best and
    deleting the old leaves a best the checkpoint does not track. Resuming in the same directory
    removes both: one best and last.ckpt remain."""
    run = ["trainer.limit_train_batches=1", "test=false"]
    tree, run_dir = synth_trees["ms3"], tmp_path / "run"
    train(tiny_run("ms3", tree, run_dir, [*run, "trainer.max_epochs=1"]))
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "last.ckpt.partial").write_bytes(b"torn write")
    shutil.copyfile(checkpoints / "last.ckpt", checkpoints / "epoch_007.ckpt")
    resume = [*run, "trainer.max_epochs=2", f"ckpt_path={checkpoints / 'last.ckpt'}"]
    train(tiny_run("ms3", tree, run_dir, resume))
    left = sorted(p.name for p in checkpoints.iterdir())
    assert len(left) == 2 and "last.ckpt" in left and left[0].startswith("epoch_00"), left


def test_resuming_a_checkpoint_of_another_task_is_refused(trained_runs, synth_trees, tmp_path):
    ms3 = trained_runs / "0" / "checkpoints" / "last.ckpt"
    cfg = tiny_run("s4", synth_trees["s4"], tmp_path, [f"ckpt_path={ms3}"])
    with pytest.raises(ValueError, match=r"data.task: 'ms3' in the checkpoint, 's4' in this run"):
        train(cfg)


def test_eval_names_the_task_when_data_root_holds_another(trained_runs, synth_trees, tmp_path):
    ms3 = trained_runs / "0" / "checkpoints" / "last.ckpt"
    cfg = eval_run(ms3, tmp_path, [f"data.root={synth_trees['s4']}"])
    with pytest.raises(FileNotFoundError, match=r"holds AVSBench S4 .* the task here is MS3"):
        evaluate(cfg)
