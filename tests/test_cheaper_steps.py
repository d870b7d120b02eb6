"""Savings that change nothing: the encoder feature cache and the frames nobody reads.

Each is compared against the path without it: the same losses, gradients and metrics.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from avsac_lit.models.avsac import AVSAC
from avsac_lit.models.avsegformer import AVSegFormer
from avsac_lit.models.backbone import VisualBackbone
from avsac_lit.models.losses import AVSCriterion
from avsac_lit.models.vggish import AudioEncoder
from avsac_lit.system.feature_cache import EncoderFeatureCache
from avsac_lit.system.frames import frames_to_compute
from avsac_lit.system.module import AVSLitModule
from avsac_lit.train import train
from tests.helpers import tiny_run

SMALL = dict(dim=32, num_queries=4, generator_layers=1, mlp_hidden=32, heads=4, hidden_dim=64)


def small_module(
    model: str = "avsegformer",
    *,
    sync: str = "none",
    freeze_visual: bool = True,
    normalize: bool = False,
    cache: EncoderFeatureCache | None = None,
    skip: bool = True,
    eval_when_frozen: bool = True,
) -> AVSLitModule:
    torch.manual_seed(0)
    visual = VisualBackbone(
        name="avsac_tiny_pvt", freeze=freeze_visual, eval_when_frozen=eval_when_frozen
    )
    audio = AudioEncoder(dim=32, normalize=normalize)
    if model == "avsegformer":
        net = AVSegFormer(
            visual=visual, audio=audio, encoder_layers=1, decoder_layers=1, dropout=0.0, **SMALL
        )
    else:
        net = AVSAC(visual=visual, audio=audio, decoder_layers=1, dropout=0.0, **SMALL)
    return AVSLitModule(
        name=model,
        num_classes=1,
        net=net,
        loss=AVSCriterion(
            num_classes=1,
            seg="dice" if model == "avsegformer" else "focal_dice",
            sync=sync,
            feature_key="mask_feature" if model == "avsegformer" else "agv",
            mix_weight=0.1 if model == "avsegformer" else 0.0,
        ),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        scheduler_interval="epoch",
        warmup_steps=0,
        eval_padding_frames=True,
        audio_share_batches=0,
        feature_cache=cache,
        skip_unread_frames=skip,
    ).train()


def s4_train_batch(clips: int = 3, frames: int = 5, size: int = 32, seed: int = 1) -> dict:
    """An S4 training batch: only each clip's first frame has a mask."""
    generator = torch.Generator().manual_seed(seed)
    mask_valid = torch.zeros(clips, frames, dtype=torch.bool)
    mask_valid[:, 0] = True
    return {
        "frames": torch.randn(clips, frames, 3, size, size, generator=generator),
        "audio": torch.randn(clips, frames, 1, 96, 64, generator=generator),
        "masks": (torch.rand(clips, frames, size, size, generator=generator) > 0.6).float(),
        "mask_valid": mask_valid,
        "frame_valid": torch.ones(clips, frames, dtype=torch.bool),
        "name": [f"clip{i}" for i in range(clips)],
    }


def loss_and_gradients(module: AVSLitModule, batch: dict) -> tuple[dict, dict]:
    module.zero_grad()
    _, losses = module.model_step(batch)
    losses["loss"].backward()
    gradients = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, gradients


def computed(module: AVSLitModule, batch: dict) -> dict:
    """The batch as the module's training step computes it."""
    skip = module.hparams.skip_unread_frames
    return frames_to_compute(batch, module.net, module.criterion, skip)


def frames_seen(module: AVSLitModule, batch: dict) -> tuple[int, ...]:
    return tuple(computed(module, batch)["frames"].shape[:2])


def in_float64(module: AVSLitModule, batch: dict) -> tuple[AVSLitModule, dict]:
    batch = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in batch.items()
    }
    return module.double(), batch


def test_s4_training_computes_only_the_labelled_frame_with_the_same_loss_and_gradients():
    module = small_module("avsegformer")
    batch = s4_train_batch()
    assert frames_seen(module, batch) == (3, 1)
    full_losses, _ = loss_and_gradients(module, batch)
    losses, _ = loss_and_gradients(module, computed(module, batch))
    assert full_losses.keys() == losses.keys() == {"seg", "mix", "loss"}
    for name, value in full_losses.items():  # float32
        assert losses[name].item() == pytest.approx(value.item(), abs=1e-6), name
    # Gradients in float64, where the only difference left, summation order, is below 1e-12
    # (float32 rounds the two batch shapes' sums differently, by up to 1% of tiny gradients).
    module, batch = in_float64(module, batch)
    _, full_gradients = loss_and_gradients(module, batch)
    _, gradients = loss_and_gradients(module, computed(module, batch))
    assert full_gradients.keys() == gradients.keys()
    for name, gradient in full_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, atol=1e-12, rtol=1e-9, msg=name)


def test_frames_are_kept_where_something_reads_them():
    batch = s4_train_batch()
    # AVSAC's AVFS loss reads every frame; without it, AVSAC skips them too.
    assert frames_seen(small_module("avsac", sync="kl"), batch) == (3, 5)
    assert frames_seen(small_module("avsac", sync="none"), batch) == (3, 1)
    # A BatchNorm in train mode normalises over every frame of the batch.
    assert frames_seen(small_module(normalize=True), batch) == (3, 5)
    assert frames_seen(small_module(skip=False), batch) == (3, 5)
    # MS3: every frame labelled.
    batch["mask_valid"][:] = True
    assert frames_seen(small_module(), batch) == (3, 5)


def test_clips_with_unequal_labelled_frames_become_one_frame_clips():
    batch = s4_train_batch()
    batch["mask_valid"][1, 2:4] = True  # clip 1 has 3 labelled frames, the others 1
    module = small_module()
    selected = computed(module, batch)
    assert selected["frames"].shape[:2] == (5, 1)
    assert selected["name"] == ["clip0", "clip1", "clip1", "clip1", "clip2"]
    assert torch.equal(selected["frames"][2, 0], batch["frames"][1, 2])
    full, _ = loss_and_gradients(module, batch)
    skipped, _ = loss_and_gradients(module, selected)
    assert skipped["loss"].item() == pytest.approx(full["loss"].item(), abs=1e-6)


def with_and_without_cache(root: Path, dtype: str, frames: int):
    """(batch, the uncached model's outputs, a model with a bound cache, the cache)."""
    batch = s4_train_batch(clips=2, frames=frames)
    batch["mask_valid"][:] = True
    reference, _ = small_module("avsac", sync="kl").model_step(batch)
    cache = EncoderFeatureCache(root=root, dtype=dtype)
    module = small_module("avsac", sync="kl", cache=cache)
    cache.bind(module.net)
    return batch, reference, module, cache


def test_float32_cache_gives_bit_identical_outputs_computed_once(tmp_path):
    batch, reference, module, cache = with_and_without_cache(tmp_path, "float32", frames=3)
    for epoch in range(2):
        outputs, _ = module.model_step(batch)
        assert torch.equal(outputs["logits"], reference["logits"]), epoch
        # Six frames, each computed in the first epoch and read in the second, for both encoders.
        assert (cache.hits, cache.misses) == ((0, 12) if epoch == 0 else (12, 12))
    stores = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert stores == ["audio", "visual"]
    assert all(len(list(p.glob("*.npy"))) == 6 for p in tmp_path.iterdir())


def test_float16_cache_rounds_the_same_way_when_computing_and_reading(tmp_path):
    batch, reference, module, cache = with_and_without_cache(tmp_path, "float16", frames=2)
    computed, _ = module.model_step(batch)
    read, _ = module.model_step(batch)
    assert cache.hits == 8
    assert torch.equal(computed["logits"], read["logits"])
    difference = (computed["logits"] - reference["logits"]).abs().max().item()
    assert 0 < difference < 1e-2 * reference["logits"].abs().max().item()


def test_the_cache_never_serves_other_weights_sizes_or_a_training_encoder(tmp_path):
    cache = EncoderFeatureCache(root=tmp_path, dtype="float32")
    module = small_module(cache=cache)
    cache.bind(module.net)
    batch = s4_train_batch(clips=1, frames=2)
    module.model_step(batch)
    module.model_step(s4_train_batch(clips=1, frames=2, size=64))  # another input size
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("visual")]) == 2
    with torch.no_grad():  # other weights: another store, nothing read from the first
        module.net.visual.model.patch_embed.proj.weight.mul_(2)
    cache.bind(module.net)
    hits = cache.hits
    module.model_step(batch)
    assert cache.hits == hits + 2  # the audio entries only
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("visual")]) == 3
    # A backbone that trains, or that stays in train mode while frozen (AVSegFormer's official
    # recipe: drop path active), is run on every batch; the frozen VGGish still comes from disk.
    for settings in ({"freeze_visual": False}, {"eval_when_frozen": False}):
        cache = EncoderFeatureCache(root=tmp_path / str(settings), dtype="float32")
        module = small_module(cache=cache, **settings)
        cache.bind(module.net)
        assert set(cache.outputs(module.net, batch["frames"][0], batch["audio"][0])) == {"audio"}
    # Unfrozen after binding (AVSegFormer's unfreeze callback): no longer served.
    cache = EncoderFeatureCache(root=tmp_path / "unfrozen", dtype="float32")
    module = small_module(cache=cache)
    cache.bind(module.net)
    module.net.visual.set_frozen(False)
    assert set(cache.outputs(module.net, batch["frames"][0], batch["audio"][0])) == {"audio"}


def test_a_cached_run_scores_as_a_run_without_the_cache(synth_trees, tmp_path, monkeypatch):
    """Two epochs of the tiny AVSAC with a frozen backbone: with the float32 cache every metric is
    the uncached run's, and the second epoch reads every encoder output from disk. To float32
    rounding, not bit for bit: the second epoch's uncached run computes each frame's features in
    another batch than the one the cache stored them from, and on some CPUs (an Intel Xeon with
    AMX) the matrix-product kernels round a row differently with the batch's row count."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("AVSAC_CACHE_DIR", str(cache_dir))
    run = ["trainer.max_epochs=2", "backbone.freeze=true", "model.feature_cache.dtype=float32"]
    plain = train(
        tiny_run("ms3", synth_trees["ms3"], tmp_path / "plain", [*run, "~model.feature_cache"])
    )
    assert not (cache_dir / "encoder_features").exists()
    cached = train(tiny_run("ms3", synth_trees["ms3"], tmp_path / "cached", run))
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    stores = {p.name.split("-")[0]: p for p in (cache_dir / "encoder_features").iterdir()}
    assert set(stores) == {"visual", "audio"}
    frames = sum(1 for _ in Path(synth_trees["ms3"]).rglob("*.mp4_*.png"))
    # The train and validation clips' frames, once each (the test split is not cached).
    stored = len(list(stores["visual"].glob("*.npy")))
    assert 0 < stored < frames
    assert json.loads((stores["visual"] / "layout.json").read_text())[0][0] == 16


@pytest.mark.parametrize("model", ["avsegformer", "avsac"])
def test_memory_switches_give_the_same_outputs_and_gradients(model):
    """Activation checkpointing and the chunked prediction head, with dropout on (recomputation
    replays the same masks): equal to the plain forward and backward, in float64."""
    batch = s4_train_batch(clips=2, frames=3)
    batch["mask_valid"][:] = True
    results = []
    for checkpointing, chunk in ((False, 0), (True, 2)):
        module = small_module(model, sync="kl" if model == "avsac" else "none")
        module.net.activation_checkpointing = checkpointing
        module.net.mask_head_chunk = chunk
        if model == "avsac":
            module.net.bavd.activation_checkpointing = checkpointing
        for layer in module.net.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.3
        module, batch64 = in_float64(module, batch)
        torch.manual_seed(5)
        outputs, _ = module.model_step(batch64)
        losses, gradients = loss_and_gradients(module, batch64)
        results.append((outputs["logits"].detach(), losses, gradients))
    (logits, losses, gradients), (logits2, losses2, gradients2) = results
    torch.testing.assert_close(logits2, logits, atol=1e-12, rtol=0)
    assert losses2["loss"].item() == pytest.approx(losses["loss"].item(), abs=1e-12)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradients2[name], gradient, atol=1e-12, rtol=1e-9, msg=name)


def test_mask_head_chunk_must_be_a_number_of_frames():
    with pytest.raises(ValueError, match=r"model\.net\.mask_head_chunk=-1"):
        AVSegFormer(
            visual=VisualBackbone(name="avsac_tiny_pvt"), audio=AudioEncoder(dim=32),
            mask_head_chunk=-1, **SMALL,
        )  # fmt: skip


def eval_logits(module: AVSLitModule, batch: dict, precision: str = "32-true") -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(batch)["logits"].float()
        return module(batch)["logits"]


def test_bf16_mixed_logits_stay_close_to_float32():
    """trainer.precision=bf16-mixed: matmuls and convolutions in bfloat16 (8 bits of mantissa).
    The difference measured here is written down in docs/performance.md."""
    batch = s4_train_batch(clips=2, frames=2, size=64)
    module = small_module("avsac", sync="kl")
    reference = eval_logits(module, batch)
    mixed = eval_logits(module, batch, "bf16-mixed")
    scale = reference.abs().max().item()
    difference = (mixed - reference).abs().max().item()
    assert 0 < difference < 0.05 * scale
    # Masks as the metrics see them (logit > 0) agree almost everywhere.
    assert ((mixed > 0) == (reference > 0)).float().mean().item() > 0.98


@pytest.mark.slow
def test_compiled_model_logits_match_float32():
    """compile=true (nn.Module.compile; inductor on the CPU, a few minutes of compiling)."""
    batch = s4_train_batch(clips=2, frames=2, size=64)
    module = small_module("avsac", sync="kl")
    reference = eval_logits(module, batch)
    module.net.compile()
    compiled = eval_logits(module, batch)
    tolerance = 1e-4 * reference.abs().max().item()
    torch.testing.assert_close(compiled, reference, atol=tolerance, rtol=0)
    assert list(module.state_dict()) == list(small_module("avsac", sync="kl").state_dict())
