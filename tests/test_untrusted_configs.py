"""Files a user is handed run no code and are never read wrong in silence (docs/bad_inputs.md,
rows 38.1 and 38.16g): a config read from a file (a checkpoint's, ``config=``, a run's
``config.yaml``) builds only the classes the suite names, and a checkpoint whose weights are not
those of the model its config builds is named, with the keys that differ."""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import avsac_lit
from avsac_lit.checkpoints.io import read_checkpoint
from avsac_lit.checkpoints.trust import UntrustedConfigError, buildable
from avsac_lit.checkpoints.versions import CheckpointMismatchError
from avsac_lit.checkpoints.writer import AtomicCheckpointIO
from avsac_lit.eval import evaluate
from avsac_lit.export import export
from avsac_lit.inference.trained import load_trained
from avsac_lit.predict import predict
from avsac_lit.run.resume import check_resumable
from avsac_lit.storage.checksums import write_checkpoint
from avsac_lit.train import train
from tests.helpers import eval_run, tiny_run


class CreatesOnLoad:
    """Unpickled, creates the file ``path``: what any pickled payload could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def last_ckpt(trained_runs: Path) -> Path:
    return trained_runs / "0" / "checkpoints" / "last.ckpt"


def sealed_copy(source: Path, destination: Path, edit) -> Path:
    """``source`` with ``edit`` applied, written with valid checksums, as anyone can write one."""
    checkpoint = read_checkpoint(source)
    edit(checkpoint)
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(checkpoint, destination)
    return destination


def payload(kind: str, marker: Path, folder: Path) -> tuple[object, str]:
    """A node that creates ``marker`` when Hydra builds it, and the target its refusal names."""
    if kind == "open":
        return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}, "builtins.open"
    if kind == "pickle":
        pickled = folder / "other.ckpt"
        torch.save(CreatesOnLoad(marker), pickled)
        node = {"_target_": "torch.load", "f": str(pickled), "weights_only": False}
        return node, "torch.load"
    # A resolver makes the node only when the config is resolved: Hydra resolves before building.
    return f"${{oc.create:{{_target_:builtins.open,file:'{marker}',mode:w}}}}", "builtins.open"


def refusal(source: str, target: str) -> str:
    return (
        rf"Refusing {re.escape(source)}: it names model\.net\._target_='{re.escape(target)}', "
        r"and avsac-lit builds only the classes of its own configs and torch\.optim's "
        r"optimisers and schedulers\..*nothing was built from it"
    )


@pytest.mark.parametrize("kind", ["open", "pickle", "resolver"])
def test_a_checkpoint_whose_config_names_other_code_is_refused_before_anything_is_built(
    kind, trained_runs, last_ckpt, tmp_path
):
    """Valid checksums, no pickle in it: on 0.7.1 eval, predict, export and load_trained built
    the payload (creating the marker, or running the pickle it loads) before failing."""
    marker = tmp_path / "marker"
    node, target = payload(kind, marker, tmp_path)

    def naming_other_code(checkpoint: dict) -> None:
        checkpoint["avsac_lit"]["config"]["model"]["net"] = node

    handed = sealed_copy(last_ckpt, tmp_path / "handed" / "last.ckpt", naming_other_code)
    refused = refusal(f"the config stored in {handed}", target)
    with pytest.raises(UntrustedConfigError, match=refused):
        evaluate(eval_run(handed, tmp_path / "eval"))
    with pytest.raises(UntrustedConfigError, match=refused):
        load_trained(handed)
    with pytest.raises(UntrustedConfigError, match=refused):
        predict(handed, tmp_path / "clip.mp4", tmp_path / "predicted")
    with pytest.raises(UntrustedConfigError, match=refused):
        export(handed, tmp_path / "exported.ckpt")
    # A resume builds from its own command line and only compares the checkpoint's config.
    resumed = tiny_run("ms3", trained_runs.parent / "data", tmp_path / "resume",
                       [f"ckpt_path={handed}"])  # fmt: skip
    with pytest.raises(ValueError, match=r"written by another kind of run .*model\.net"):
        train(resumed)
    assert not marker.exists()
    assert not (tmp_path / "eval" / "metrics.json").exists()
    assert not (tmp_path / "predicted").exists() and not (tmp_path / "exported.ckpt").exists()
    assert not (tmp_path / "resume" / "config.yaml").exists()  # no run was built


def test_config_and_the_runs_config_yaml_are_checked_too(trained_runs, last_ckpt, tmp_path):
    """A checkpoint without a config takes ``config=`` or its run's ``config.yaml``: a payload
    there ran on 0.7.1 as one in the checkpoint did."""
    marker = tmp_path / "marker"
    node, target = payload("open", marker, tmp_path)
    config = OmegaConf.load(trained_runs / "0" / "config.yaml")
    config.model.net = node
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(config, run / "config.yaml")
    OmegaConf.save(config, tmp_path / "given.yaml")

    def without_config(checkpoint: dict) -> None:
        del checkpoint["avsac_lit"]["config"]

    old = sealed_copy(last_ckpt, run / "checkpoints" / "old.ckpt", without_config)
    beside = refusal(f"{run / 'config.yaml'} (the run's config, read for {old}, which carries "
                     "none)", target)  # fmt: skip
    with pytest.raises(UntrustedConfigError, match=beside):
        evaluate(eval_run(old, tmp_path / "eval"))
    with pytest.raises(UntrustedConfigError, match=beside):
        load_trained(old)
    given = refusal(f"config={tmp_path / 'given.yaml'}", target)
    with pytest.raises(UntrustedConfigError, match=given):
        evaluate(eval_run(old, tmp_path / "eval", [f"++config={tmp_path / 'given.yaml'}"]))
    with pytest.raises(UntrustedConfigError, match=given):
        load_trained(old, config=tmp_path / "given.yaml")
    with pytest.raises(UntrustedConfigError, match=given):
        predict(old, tmp_path / "clip.mp4", tmp_path / "out", config=tmp_path / "given.yaml")
    assert not marker.exists()


def test_an_old_layout_config_reads_only_the_packages_model_configs(
    trained_runs, last_ckpt, tmp_path
):
    """A config of version 0.1's layout (no ``model._target_``) is completed from
    ``conf/model/<model.name>.yaml``; on 0.7.1 a name that was a path read any YAML file, and
    built what it named."""
    marker = tmp_path / "marker"
    OmegaConf.save({"loss": payload("open", marker, tmp_path)[0]}, tmp_path / "elsewhere.yaml")
    config = OmegaConf.load(trained_runs / "0" / "config.yaml")
    for key in ("_target_", "loss"):
        config.model.pop(key)
    config.model.name = str(tmp_path / "elsewhere")

    def old_layout(checkpoint: dict) -> None:
        checkpoint["avsac_lit"]["config"] = OmegaConf.to_container(config)

    old = sealed_copy(last_ckpt, tmp_path / "old.ckpt", old_layout)
    elsewhere = re.escape(str(tmp_path / "elsewhere"))
    with pytest.raises(UntrustedConfigError, match=rf"model\.name='{elsewhere}' is not a model "
                       r"of avsac-lit \(avsac, avsegformer\)"):  # fmt: skip
        load_trained(old)
    assert not marker.exists()


def test_a_checkpoint_trained_with_another_optimiser_and_a_callback_of_its_own_evaluates(
    last_ckpt, tmp_path
):
    """A run may train with any torch.optim optimiser and scheduler, and callbacks of the
    user's, from its command line; its checkpoint names them, and they pass (no command builds
    a file's callbacks)."""

    def trained_with_sgd(checkpoint: dict) -> None:
        config = checkpoint["avsac_lit"]["config"]
        config["callbacks"]["mine"] = {"_target_": "tests.helpers.SignalAt", "step": 0}
        model = config["model"]
        model["optimizer"] = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01,
                              "momentum": 0.9}  # fmt: skip
        model["scheduler"] = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True,
                              "step_size": 1}  # fmt: skip

    sgd = sealed_copy(last_ckpt, tmp_path / "sgd.ckpt", trained_with_sgd)
    assert 0.0 <= evaluate(eval_run(sgd, tmp_path / "eval"))["test/miou"] <= 1.0
    assert load_trained(sgd).config.model.optimizer._target_ == "torch.optim.SGD"


def test_what_a_file_may_name_is_decided_without_importing_it():
    assert buildable("torch.optim.RAdam") and buildable("torch.optim.lr_scheduler.OneCycleLR")
    assert buildable("avsac_lit.models.avsegformer.AVSegFormer")  # from the shipped configs
    assert buildable("avsac_lit.models.bavd.BAVD")  # version 0.1's layout
    for target in ("builtins.exec", "torch.optim.Optimizer.zero_grad", "os.system", "this.s"):
        assert not buildable(target)
    assert "this" not in sys.modules  # importing it runs its code (it prints)


def test_lightnings_checkpoint_reads_take_no_pickle_whatever_torchs_default(tmp_path, monkeypatch):
    """Lightning reads the checkpoint it resumes or tests from through the suite's checkpoint
    IO; with torch's default turned to full unpickling, 0.7.1 ran a pickle in it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "hook": CreatesOnLoad(marker)}, tmp_path / "pickled.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "pickled.ckpt")
    assert not marker.exists()


RENAMED = "net.bavd.vga_layers.0.norm.bias"
RESHAPED = "net.bavd.vga_layers.0.cross_attn.out_proj.weight"  # [32, 32] in the tiny model


def of_another_version(checkpoint: dict) -> None:
    """Weights as another version's model would have them: a key renamed, a tensor reshaped."""
    state_dict = checkpoint["state_dict"]
    state_dict[RENAMED.replace(".norm.", ".norm_out.")] = state_dict.pop(RENAMED)
    state_dict[RESHAPED] = state_dict[RESHAPED][:, :16].clone()
    checkpoint["avsac_lit"]["version"] = "0.5.0"


def test_a_checkpoint_of_another_versions_model_is_named_with_the_keys_that_differ(
    trained_runs, last_ckpt, tmp_path
):
    """On 0.7.1 eval, predict and resume failed with torch's "Error(s) in loading state_dict
    ... size mismatch", which names neither the file nor a way on."""
    other = sealed_copy(last_ckpt, tmp_path / "other.ckpt", of_another_version)
    named = (
        rf"Checkpoint {re.escape(str(other))} does not fit the model its config builds with "
        rf"avsac-lit [\d.]+: its weights differ from the model's, 1 missing from it "
        rf"\({re.escape(RENAMED)}\), 1 not in the model "
        r"\(net\.bavd\.vga_layers\.0\.norm_out\.bias\), 1 of another shape "
        rf"\({re.escape(RESHAPED)}: \[32, 16\] in the checkpoint, \[32, 32\] here\)\. It was "
        r"written by avsac-lit 0\.5\.0.*with the version that wrote it \(pip install "
        r"avsac-lit==<version>"
    )
    with pytest.raises(CheckpointMismatchError, match=named):
        load_trained(other)  # what avsac_lit.predict loads with
    with pytest.raises(CheckpointMismatchError, match=named):
        evaluate(eval_run(other, tmp_path / "eval"))
    assert not (tmp_path / "eval" / "metrics.json").exists()
    resumed = tiny_run("ms3", trained_runs.parent / "data", tmp_path / "resume",
                       [f"ckpt_path={other}", "trainer.max_epochs=3"])  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match=named):
        train(resumed)


def test_a_mismatch_says_what_the_checkpoint_records_of_its_version(last_ckpt, tmp_path):
    def unversioned(checkpoint: dict) -> None:
        of_another_version(checkpoint)
        del checkpoint["avsac_lit"]["version"]

    def of_this_version(checkpoint: dict) -> None:
        of_another_version(checkpoint)
        checkpoint["avsac_lit"]["version"] = avsac_lit.__version__

    other = sealed_copy(last_ckpt, tmp_path / "unversioned.ckpt", unversioned)
    with pytest.raises(CheckpointMismatchError, match=r"It does not record the avsac-lit "
                       r"version that wrote it \(0\.7\.1 or earlier\)"):  # fmt: skip
        load_trained(other)
    # Checkpoints record it now: one of this version that does not fit was changed since.
    assert read_checkpoint(last_ckpt)["avsac_lit"]["version"] == avsac_lit.__version__
    changed = sealed_copy(last_ckpt, tmp_path / "changed.ckpt", of_this_version)
    with pytest.raises(CheckpointMismatchError, match=r"It was written by this version .*, so "
                       r"its weights and its config do not belong together"):  # fmt: skip
        load_trained(changed)


def test_a_run_of_a_users_own_class_resumes_from_its_checkpoint(trained_runs, last_ckpt, tmp_path):
    """A class of the user's, named on their own command line (``model.scheduler._target_=
    mylab.Warmup``), is recorded in the run's checkpoints; resuming compares that config with the
    run's own and builds nothing from it, so a requeued job goes on (eval and predict, which
    would build it, refuse it)."""
    own = "mylab.schedulers.Warmup"

    def of_the_users_class(checkpoint: dict) -> None:
        checkpoint["avsac_lit"]["config"]["model"]["scheduler"]["_target_"] = own

    handed = sealed_copy(last_ckpt, tmp_path / "run" / "checkpoints" / "last.ckpt",
                         of_the_users_class)  # fmt: skip
    cfg = OmegaConf.create(read_checkpoint(handed)["avsac_lit"]["config"])
    check_resumable(cfg, handed)  # no refusal: nothing is built from the checkpoint's config
    with pytest.raises(UntrustedConfigError, match=re.escape(f"_target_='{own}'")):
        load_trained(handed)
