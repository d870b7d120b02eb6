"""The paper's open readings as settings (issue 40): AGCA as Eq. 2's cross-attention or with an
audio channel gate (``model.net.agca``), AVFS's reduction (``model.loss.sync_reduction``) and
whether AVFS trains F_a (``model.loss.sync_detach_audio``), by hand-computed values; their setting
files and tables, and how the report sets the AVFS rows beside Table 2's."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from avsac_lit.checkpoints.io import training_identity
from avsac_lit.checkpoints.versions import upgraded
from avsac_lit.models.bavd import BAVD, AudioChannelGate, agca_reading
from avsac_lit.models.losses import AVSCriterion, avfs_loss
from avsac_lit.models.multiscale import MultiScaleTokens
from avsac_lit.report import report
from tests.helpers import compose_config
from tests.test_report import write_seeded_runs

K = 0.5 * math.log(4 / 3)  # KL([1/2, 1/2] || [3/4, 1/4]) = 1/2 ln(2/3) + 1/2 ln 2


def small_bavd(agca: str, seed: int = 0) -> BAVD:
    torch.manual_seed(seed)
    return BAVD(num_layers=2, agca=agca, dim=32, heads=4, hidden_dim=64, dropout=0.0).eval()


def bavd_inputs(seed: int = 1) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    levels = [torch.randn(1, 32, s, s, generator=generator) for s in (4, 2, 1)]
    return MultiScaleTokens(dim=32)(levels), torch.randn(1, 6, 32, generator=generator)


def decode(bavd: BAVD, tokens: dict, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return bavd(tokens["tokens"], tokens["pos"], tokens["reference_points"], tokens["shapes"],
                    audio)  # fmt: skip


# -- AGCA: model.net.agca ------------------------------------------------------------------------


def test_agca_takes_its_three_readings_and_its_names_until_0_9_0():
    assert [agca_reading(a) for a in ("cross_attention", "channel_gate", "none")] == [
        "cross_attention", "channel_gate", "none"]  # fmt: skip
    assert (agca_reading(True), agca_reading(False)) == ("cross_attention", "none")
    for wrong in ("gate", "true", 1, None):
        with pytest.raises(ValueError, match=r"model\.net\.agca=.*cross_attention, channel_gate"):
            BAVD(num_layers=1, agca=wrong)


def test_the_channel_gate_starts_as_eq_2_alone_with_every_other_weight_of_the_seed():
    """A seed draws the same weights under both readings, and the gate starts at 1: the two
    models start as one function, so runs of a seed differ by what the gate learns."""
    plain, gated = small_bavd("cross_attention"), small_bavd("channel_gate")
    plain_state, gated_state = plain.state_dict(), gated.state_dict()
    extra = {key.split(".channel_gate.")[1] for key in gated_state.keys() - plain_state.keys()}
    assert extra == {"attention.query.weight", "attention.key_value.weight",
                     "attention.proj.weight", "attention.proj.bias"}  # fmt: skip
    assert all(torch.equal(plain_state[key], gated_state[key]) for key in plain_state)
    tokens, audio = bavd_inputs()
    for ours, theirs in zip(decode(plain, tokens, audio), decode(gated, tokens, audio),
                            strict=True):  # fmt: skip
        assert torch.equal(ours, theirs)
    # The gate's own weights are not a copy of the draws the global stream goes on to make.
    layer = gated.agv_layers[0]
    assert not torch.equal(layer.channel_gate.attention.query.weight, layer.ffn.net[0].weight[:32])


def test_the_channel_gate_by_hand():
    """dim 2, one head, identity projections: audio token a attends over tokens t1 = [1, 0] and
    t2 = [0, 1] with scores a . t / sqrt(2). a1 = [sqrt(2) ln 3, 0]: scores ln 3, 0 -> weights
    3/4, 1/4 -> [3/4, 1/4]; a2 = [0, 0] -> [1/2, 1/2]. Their mean [5/8, 3/8] is the gate's logit;
    the gate is 2 sigmoid(logit)."""
    gate = AudioChannelGate(dim=2, heads=1)
    assert torch.equal(gate.attention.proj.weight, torch.zeros(2, 2))  # the gate starts at 1
    with torch.no_grad():
        gate.attention.query.weight.copy_(torch.eye(2))
        gate.attention.key_value.weight.copy_(torch.cat([torch.eye(2), torch.eye(2)]))
        gate.attention.proj.weight.copy_(torch.eye(2))
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    audio = torch.tensor([[[math.sqrt(2) * math.log(3), 0.0], [0.0, 0.0]]])
    expected = [2 / (1 + math.exp(-5 / 8)), 2 / (1 + math.exp(-3 / 8))]
    assert gate(tokens, audio)[0].tolist() == [
        pytest.approx([expected[0], 0.0]), pytest.approx([0.0, expected[1]])]  # fmt: skip


def test_with_w_at_zero_only_the_channel_gate_brings_the_audio_to_the_vision_tower():
    tokens, _ = bavd_inputs()
    heard = {}
    for agca in ("cross_attention", "channel_gate"):
        bavd = small_bavd(agca)
        with torch.no_grad():
            for layer in bavd.agv_layers:
                layer.audio_weight.zero_()  # Eq. 2 adds nothing
                if agca == "channel_gate":
                    torch.nn.init.normal_(layer.channel_gate.attention.proj.weight)
        one = decode(bavd, tokens, torch.randn(1, 6, 32))[0]
        other = decode(bavd, tokens, torch.randn(1, 6, 32))[0]
        heard[agca] = not torch.allclose(one, other)
    assert heard == {"cross_attention": False, "channel_gate": True}


def test_configs_and_checkpoints_that_name_agca_true_or_false_read_as_today():
    cfg = compose_config("train", ["+experiment=synthetic_ms3"])
    assert cfg.model.net.agca == "cross_attention"
    old = OmegaConf.create(OmegaConf.to_container(cfg))
    old.model.net.agca = True
    assert upgraded(old).model.net.agca == "cross_attention"
    old.model.net.agca = False
    assert upgraded(old).model.net.agca == "none"
    # A resume compares the two: the name before and today's are one model.
    named_before = compose_config("train", ["+experiment=synthetic_ms3", "model.net.agca=true"])
    assert training_identity(named_before) == training_identity(cfg)


# -- AVFS: model.loss.sync_reduction --------------------------------------------------------------


def two_frames() -> tuple[torch.Tensor, torch.Tensor]:
    """2 frames, 2 queries, 2 channels, 2 positions. F_a pooled over its queries is [0, 0] in
    both frames: P(F_a) = [1/2, 1/2]. F_AGV, frame 1: positions [0, 0] and [ln 3, 0]; frame 2:
    [ln 3, 0] at both."""
    audio = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]).expand(2, 2, 2)
    log3 = math.log(3)
    feature = torch.tensor([[[[0.0, log3]], [[0.0, 0.0]]],  # [N, C, H=1, W=2]
                            [[[log3, log3]], [[0.0, 0.0]]]])  # fmt: skip
    return audio, feature


@pytest.mark.parametrize(
    ("softmax_over", "reduction", "expected"),
    [
        # Each position a distribution over the channels: [1/2, 1/2] against [1/2, 1/2] (KL 0)
        # or [3/4, 1/4] (KL K). Frame 1: KLs 0, K; frame 2: K, K. Terms p log(p/q) at a
        # position [3/4, 1/4]: 1/2 ln(2/3) and 1/2 ln 2, which sum to K.
        ("channels", "mean_distributions", 3 * K / 4),  # (0 + K + K + K) / 4
        ("channels", "sum_distributions", 3 * K / 2),  # ((0 + K) + (K + K)) / 2 frames
        ("channels", "mean_elements", 3 * K / 8),  # 3K over 2 frames x 2 channels x 2 positions
        # Each channel a distribution over the positions, against uniform: frame 1, channel 0
        # is [1/4, 3/4] (KL K), channel 1 uniform (0); frame 2: both uniform (0, 0).
        ("positions", "mean_distributions", K / 4),
        ("positions", "sum_distributions", K / 2),
        ("positions", "mean_elements", K / 8),
    ],
)
def test_avfs_reductions_by_hand(softmax_over, reduction, expected):
    audio, feature = two_frames()
    assert avfs_loss(audio, feature, softmax_over, reduction).item() == pytest.approx(expected)


def test_the_default_reduction_is_the_one_before_and_a_wrong_one_is_refused():
    audio, feature = two_frames()
    criterion = AVSCriterion()
    assert criterion.sync_reduction == "mean_distributions"
    assert torch.equal(avfs_loss(audio, feature), avfs_loss(audio, feature, "channels",
                                                             "mean_distributions"))  # fmt: skip
    cfg = compose_config("train", ["+experiment=synthetic_ms3"])
    assert cfg.model.loss.sync_reduction == "mean_distributions"
    with pytest.raises(
        ValueError,
        match=r"model\.loss\.sync_reduction='sum'; expected one of "
        r"mean_distributions, sum_distributions, mean_elements",
    ):
        AVSCriterion(sync_reduction="sum")


# -- AVFS into F_a: model.loss.sync_detach_audio ---------------------------------------------------


@pytest.mark.parametrize(("reduction", "factor"), [("mean_distributions", 1.0),
                                                   ("sum_distributions", 2.0),
                                                   ("mean_elements", 0.5)])  # fmt: skip
def test_the_synchrony_gradient_into_f_a_by_hand(reduction, factor):
    """One frame, 2 queries, 2 channels, 2 positions (frame 1 of :func:`two_frames`). With
    P(F_a) = p = softmax(a), a the mean of the queries, d KL(p || q) / d a_j =
    p_j (log(p_j / q_j) - KL(p || q)). At the position q = [1/2, 1/2] it is 0; at
    q = [3/4, 1/4] (KL K = 1/2 ln(4/3)): 1/2 (ln(2/3) - K) = -1/4 ln 3 and
    1/2 (ln 2 - K) = +1/4 ln 3. The mean over the 2 positions halves it, the mean over the 2
    queries halves it again: each query's gradient is [-ln 3 / 16, +ln 3 / 16], times the
    reduction's factor (2 positions summed; averaged over 2 channels too)."""
    audio, feature = two_frames()
    real = torch.ones(1, 1, dtype=torch.bool)
    gradients = {}
    for detach in (True, False):
        queries = audio[:1, None].clone().requires_grad_(True)  # [B=1, T=1, Q=2, C=2]
        agv = feature[:1, None].clone().requires_grad_(True)
        criterion = AVSCriterion(sync_reduction=reduction, sync_detach_audio=detach)
        criterion.synchrony(queries, agv, real).backward()
        gradients[detach] = queries.grad, agv.grad
    assert gradients[True][0] is None  # F_a is the fixed reference: no gradient reaches it
    by_hand = factor * math.log(3) / 16
    assert gradients[False][0][0, 0].tolist() == [pytest.approx([-by_hand, by_hand])] * 2
    assert torch.equal(gradients[True][1], gradients[False][1])  # F_AGV's is the same either way


# -- setting files and tables ----------------------------------------------------------------------


def test_table_3_under_the_channel_gate_keeps_the_papers_rows():
    cfg = compose_config("train", ["+table=synthetic_table3_gate"])
    assert (cfg.group, cfg.model.net.agca, cfg.report.row) == (
        "synthetic_table3_gate", "channel_gate", "AVSAC (ours)")  # fmt: skip
    expected = {
        "audio_to_vision_gate": ("audio_to_vision", "channel_gate", "Only audio → vision"),
        "vision_to_audio_gate": ("vision_to_audio", "channel_gate", "Only vision → audio"),
        "no_gate": ("bidirectional", "cross_attention", "w/o AGCA"),
        "avsac_gate": ("bidirectional", "channel_gate", "AVSAC (ours)"),
    }
    twin = compose_config("train", ["+table=synthetic_table3"])
    for setting, (bridge, agca, row) in expected.items():
        cfg = compose_config("train", ["+table=synthetic_table3_gate", f"setting={setting}"])
        assert (cfg.model.net.bridge, cfg.model.net.agca, cfg.report.row) == (bridge, agca, row)
        assert row in cfg.report.paper
        # Everything but the rows' settings is the cross-attention twin's.
        assert (cfg.trainer.max_epochs, cfg.data.img_size, cfg.backbone.name) == (
            twin.trainer.max_epochs, twin.data.img_size, twin.backbone.name)  # fmt: skip
    # The cross-attention reading keeps its rows: "w/o AGCA" has no audio in the AGV tower.
    no_agca = compose_config("train", ["+table=synthetic_table3", "setting=no_agca"])
    assert (no_agca.model.net.agca, twin.model.net.agca) == ("none", "cross_attention")


def test_the_avfs_rows_are_table_2s_avsac_but_for_their_reading():
    table2 = compose_config("train", ["+table=synthetic_table2", "setting=avsac"])
    loss = OmegaConf.to_container(table2.model.loss)
    readings = {
        "avfs_into_audio": {"sync_detach_audio": False},
        "avfs_sum_distributions": {"sync_reduction": "sum_distributions"},
        "avfs_mean_elements": {"sync_reduction": "mean_elements"},
    }
    rows = set()
    for setting, changed in readings.items():
        cfg = compose_config("train", ["+table=synthetic_avfs", f"setting={setting}"])
        assert cfg.group == "synthetic_avfs"
        assert OmegaConf.to_container(cfg.model.loss) == {**loss, **changed}
        assert cfg.model.net == table2.model.net and cfg.trainer == table2.trainer
        assert cfg.data == table2.data
        rows.add(cfg.report.row)
        # Table 2's AVSAC stays the one row marked "(ours)", the row the claims pair with.
        assert "(ours)" not in cfg.report.row and cfg.report.paper == table2.report.paper
    assert len(rows) == 3


def test_the_avfs_rows_in_a_sub_folder_are_reported_beside_table_2s(tmp_path):
    """Table 2's sweep, then the AVFS sweep in its sub-folder ``avfs/``: one table, the AVFS rows
    after the paper's, each paired with AVSAC (ours) by seed, without a paper value."""
    paper = OmegaConf.to_container(compose_config("train", ["+table=synthetic_table2"]).report)
    config = {"paper": paper["paper"], "title": paper["title"]}
    table2 = {"Baseline (AVSegFormer)": {1: 40.0, 2: 41.0, 3: 42.0},
              "BAVD only (no AVFS)": {1: 50.0, 2: 52.0, 3: 51.0},
              "AVSAC (ours)": {1: 55.0, 2: 53.0, 3: 54.0}}  # fmt: skip
    write_seeded_runs(tmp_path, "ms3", table2, config)
    avfs = {"AVSAC, AVFS into F_a": {1: 54.0, 2: 52.0, 3: 56.0},
            "AVSAC, AVFS summed over positions": {1: 50.0, 2: 49.0, 3: 48.0}}  # fmt: skip
    write_seeded_runs(tmp_path / "avfs", "ms3", avfs, config)
    text = report(tmp_path)["markdown"].read_text()
    rows = [line.split(" |")[0].lstrip("| ") for line in text.splitlines() if "| 1, 2, 3 |" in line]
    assert rows == [*table2, *avfs]
    assert "| AVSAC, AVFS summed over positions | 49.00 ± 1.00 | – | 49.00 ± 1.00 | – |" in text
    # Paired by seed with AVSAC (ours): 55 - 50, 53 - 49, 54 - 48 = 5, 4, 6: mean 5, sd 1,
    # half-width 4.3027 / sqrt(3) = 2.484. No paper value, so no claim and no verdict.
    assert "| AVSAC, AVFS summed over positions | MS3 | mIoU | +5.00 | [+2.52, +7.48] | 3 |" in text
    assert "| AVSAC, AVFS into F_a | MS3 | mIoU | +0.00 | [-4.30, +4.30] | 3 |" in text
    assert "AVSAC (ours) > AVSAC, AVFS" not in text  # no claim: the paper gives no value
    assert "AVSAC (ours) > BAVD only (no AVFS) | MS3 | mIoU | +0.65 | +3.00 |" in text
