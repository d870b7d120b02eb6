"""The paper-table recipes and ``avsac_lit.report``: a tiny real multirun, then its tables."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from avsac_lit.analysis.table import ReportError
from avsac_lit.data.manifest import reference_scores
from avsac_lit.report import main, report
from tests import commands
from tests.helpers import CONF, TINY_RUN, compose_config

TABLES = sorted(p.stem for p in (CONF / "table").glob("*.yaml"))
# The paper's open readings as tables (issue 40): Table 3 with AGCA read as a channel gate, and
# the AVFS readings as rows beside Table 2's.
READINGS = ("synthetic_table3_gate", "synthetic_avfs")


def recipe_sweep(table: str) -> dict:
    """A recipe's ``hydra.sweeper.params``, merged over those of the recipe it starts from (a
    twin's paper recipe, a reading's twin)."""
    raw = OmegaConf.load(CONF / "table" / f"{table}.yaml")
    sweep = dict(raw.hydra.sweeper.params)
    parent = raw.defaults[0]
    if isinstance(parent, str) and (CONF / "table" / f"{parent}.yaml").exists():
        sweep = {**recipe_sweep(parent), **sweep}
    return sweep


def sweep_points(table: str) -> list[list[str]]:
    """Every point of a recipe's sweep but the seed (which changes no structure)."""
    axes = [
        [f"{key}={value.strip()}" for value in str(values).split(",")]
        for key, values in recipe_sweep(table).items()
        if key != "seed"
    ]
    return [list(point) for point in itertools.product(*axes)]


def test_there_is_a_recipe_and_a_synthetic_twin_per_paper_table():
    paper_tables = [f"{p}table{n}" for p in ("", "synthetic_") for n in range(1, 6)]
    assert sorted([*paper_tables, *READINGS]) == TABLES


@pytest.mark.parametrize("table", TABLES)
def test_every_point_of_a_recipe_composes_with_a_row_its_group_and_tags(table):
    assert len(str(recipe_sweep(table)["seed"]).split(",")) >= 3, "a seeds axis of >= 3 seeds"
    points = sweep_points(table)
    rows, tasks = set(), set()
    for point in points:
        cfg = compose_config("train", [f"+table={table}", *point])
        assert cfg.group == table  # the W&B group: one per table
        tags = OmegaConf.to_container(cfg.tags, resolve=True)
        assert table in tags and cfg.data.task in tags
        rows.add(cfg.report.row)
        tasks.add(cfg.data.task)
        # The twin's tiny backbone is no paper row, nor is a reading of AVFS.
        if table not in ("synthetic_table1", "synthetic_avfs"):
            assert cfg.report.row in cfg.report.paper, f"{table} {point}: no paper row"
            # The row the claims are made against: named, or the one marked "(ours)".
            ours = cfg.report.get("reference") or next(
                (row for row in cfg.report.paper if "(ours)" in row), None
            )
            assert table.endswith("table1") or ours in cfg.report.paper, table
            assert cfg.data.task in cfg.report.paper[cfg.report.row]
    # The tasks are the table's column groups; everything else swept is a row of its own.
    assert len(rows) * len(tasks) == len(points)


def test_a_synthetic_baseline_is_sized_like_the_synthetic_avsac():
    cfg = compose_config("train", ["+table=synthetic_table2", "setting=avsegformer_small"])
    assert cfg.model.name == "avsegformer"
    net = cfg.model.net
    avsac = compose_config("train", ["+table=synthetic_table2", "setting=avsac"]).model.net
    assert (net.encoder_layers, net.decoder_layers) == (2, 2) == (avsac.decoder_layers,) * 2
    assert (net.heads, net.hidden_dim, net.dim) == (avsac.heads, avsac.hidden_dim, avsac.dim)
    assert "bridge" not in net  # nothing of AVSAC's is carried by the baseline


def test_table1_gives_each_backbone_its_own_weights_file():
    for backbone in ("resnet50", "pvt_v2_b5"):
        cfg = compose_config(
            "train",
            ["+table=table1", f"backbone={backbone}", "weights.resnet50=/w/r50.pth",
             "weights.pvt_v2_b5=/w/pvt.pth"],
        )  # fmt: skip
        expected = {"resnet50": "/w/r50.pth", "pvt_v2_b5": "/w/pvt.pth"}[backbone]
        assert cfg.backbone.weights == expected


# -- a real multirun ------------------------------------------------------------------------------


def run_multirun(root: Path, sweep_dir: Path, extra: list[str]) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY_RUN if not o.startswith("~")]  # +debug has no callbacks or logger
    command = [
        sys.executable, "-m", "avsac_lit.train", "-m", "+table=synthetic_table2",
        f"data.root={root}", *tiny, "+debug=fdr",
        f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "AVSAC_ROOT": str(sweep_dir.parent)}
    return commands.run(command, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_multirun(synth_trees, tmp_path_factory) -> Path:
    """2 settings x 2 seeds of Table 2's twin with fast_dev_run, plus one job that fails."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "table2"
    result = run_multirun(
        synth_trees["ms3"], sweep_dir,
        ["setting=bavd,avsac", "seed=1,2", "model.net.bridge=bidirectional,sideways"],
    )  # fmt: skip
    # Hydra runs every job, then fails the multirun for the jobs that raised.
    assert result.returncode != 0, result.stdout[-2000:]
    assert "sideways" in result.stderr
    return sweep_dir


def test_a_multirun_writes_one_run_directory_per_point(tiny_multirun):
    runs = sorted(p for p in tiny_multirun.iterdir() if p.is_dir())
    assert [p.name for p in runs] == [str(i) for i in range(8)]
    finished = [p for p in runs if (p / "metrics.json").exists()]
    assert len(finished) == 4
    points = {
        tuple(sorted(o for o in OmegaConf.load(p / ".hydra" / "overrides.yaml") if "=" in o))
        for p in finished
    }
    assert len(points) == 4  # four distinct points, none run twice
    record = json.loads((finished[0] / "metrics.json").read_text())
    assert record["commit"] and record["hardware"].startswith(("CPU", "1 x", "2 x"))


def test_the_report_has_one_row_per_setting_and_lists_the_failed_runs(
    tiny_multirun, synth_trees, tmp_path
):
    directory = tmp_path / "table2"
    shutil.copytree(tiny_multirun, directory)
    files = report(directory)
    with files["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    reference = "reference: every visible object (no audio)"
    assert [row["setting"] for row in rows] == ["BAVD only (no AVFS)", "AVSAC (ours)", reference]
    vision_only = reference_scores(synth_trees["ms3"])["vision_only"]
    assert float(rows[2]["MS3 mIoU mean"]) == pytest.approx(100 * vision_only["miou"], abs=1e-4)
    for row in rows[:2]:
        assert row["seeds"] == "1 2"
        assert row["MS3 mIoU n"] == "2"  # a given tree (data.synthetic=null) is labelled by task
    ours = rows[1]
    assert float(ours["paper MS3 mIoU"]) == pytest.approx(64.15)
    assert float(ours["paper MS3 F"]) == pytest.approx(76.60)
    measured = json.loads((directory / "0" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= measured["test/miou"] <= 1.0

    text = files["markdown"].read_text()
    assert "| BAVD only (no AVFS) |" in text and "| AVSAC (ours) |" in text
    failed = text.split("## Runs without results", 1)[1].split("## Provenance", 1)[0]
    assert failed.count("no metrics.json") == 4
    assert "sideways" in failed  # the error that stopped them, from the run's log
    assert "Command: `python -m avsac_lit.train -m +table=synthetic_table2" in text
    for metric in ("test/f", "test/miou"):
        with Image.open(files[metric]) as image:
            assert image.format == "PNG" and image.width > 300


def test_the_report_lists_jobs_that_never_started(tiny_multirun, tmp_path):
    directory = tmp_path / "table2"
    shutil.copytree(tiny_multirun, directory)
    shutil.rmtree(directory / "1")
    overrides = " ".join(OmegaConf.load(tiny_multirun / "1" / ".hydra" / "overrides.yaml"))
    text = report(directory)["markdown"].read_text()
    assert f"never started: `{overrides}`" in text


def test_a_report_of_means_and_stds_matches_a_hand_computation(tmp_path):
    # Two seeds of one setting with known metrics: mean and sample std by hand.
    for index, (seed, miou) in enumerate(((1, 0.60), (2, 0.70))):
        run = tmp_path / str(index)
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(
            OmegaConf.create([f"seed={seed}", "model=avsac"]), run / ".hydra/overrides.yaml"
        )
        OmegaConf.save(OmegaConf.create({"seed": seed, "data": {"task": "s4", "synthetic": None}}),
                       run / "config.yaml")  # fmt: skip
        record = {"metrics": {"test/miou": miou, "test/f": 0.8}, "task": "s4", "seed": seed}
        (run / "metrics.json").write_text(json.dumps(record))
    text = report(tmp_path)["markdown"].read_text()
    # mean 65.00, sample std sqrt(((60-65)^2 + (70-65)^2) / 1) = 7.07
    assert "| all runs | 80.00 ± 0.00 | 65.00 ± 7.07 | 1, 2 |" in text


def test_a_table_completed_in_a_sub_folder_is_reported_as_one(tmp_path):
    # A sweep of 4 and 6 layers, then 2 and 8 layers in a sub-folder, of which 8 never started:
    # the runs are found as 4, 6, 2.
    paper = {f"{n} layers": {"s4": {"miou": 80.0 + n}} for n in (2, 4, 6)}
    for index, layers in (("0", 4), ("1", 6), ("more/0", 2)):
        run = tmp_path / index
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.net.decoder_layers={layers}"]),
                       run / ".hydra/overrides.yaml")  # fmt: skip
        config = {"seed": 1, "data": {"task": "s4", "synthetic": None},
                  "report": {"row": f"{layers} layers", "paper": paper}}  # fmt: skip
        OmegaConf.save(OmegaConf.create(config), run / "config.yaml")
        record = {"metrics": {"test/miou": 0.5, "test/f": 0.6}, "task": "s4", "seed": 1}
        (run / "metrics.json").write_text(json.dumps(record))
    OmegaConf.save({"hydra": {"overrides": {"task": ["model.net.decoder_layers=4,6"]}}},
                   tmp_path / "multirun.yaml")  # fmt: skip
    OmegaConf.save({"hydra": {"overrides": {"task": ["model.net.decoder_layers=2,8"]}}},
                   tmp_path / "more/multirun.yaml")  # fmt: skip
    lines = report(tmp_path)["markdown"].read_text().splitlines()
    assert "- Command: `python -m avsac_lit.train -m model.net.decoder_layers=4,6`" in lines
    assert (
        "- Command: `python -m avsac_lit.train -m model.net.decoder_layers=2,8` "
        "(runs under `more/`)" in lines
    )
    assert any("never started: `model.net.decoder_layers=8`" in line for line in lines)
    order = [line.split(" |")[0].lstrip("| ") for line in lines if " layers |" in line]
    assert order == ["2 layers", "4 layers", "6 layers"]


def test_a_directory_without_finished_runs_is_refused(tiny_multirun, tmp_path, capsys):
    with pytest.raises(ReportError, match="no finished runs"):
        report(tmp_path)
    only_failed = tmp_path / "failed"
    only_failed.mkdir()
    shutil.copytree(tiny_multirun / "1", only_failed / "1")
    with pytest.raises(ReportError, match=r"no finished runs(.|\n)*sideways"):
        report(only_failed)
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_audio_share_of_the_tested_checkpoint_is_a_column(trained_runs):
    files = report(trained_runs)
    with files["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    shares = [
        json.loads((trained_runs / job / "metrics.json").read_text())["metrics"]["test/audio_share"]
        for job in ("0", "1")
    ]
    columns = [c for c in rows[0] if "audio share" in c]
    assert columns and all("val" not in c for c in columns)  # the test value, not the last epoch's
    mean_column = next(c for c in columns if "mean" in c)
    assert float(rows[0][mean_column]) == pytest.approx(statistics.fmean(shares), abs=1e-4)
    assert "the audio share from 0 to 1" in files["markdown"].read_text()


def write_seeded_runs(
    root: Path, task: str, values: dict, report_config: dict, shuffled_gap: bool = False
) -> None:
    """One finished run per row and seed of ``values`` ({row: {seed: mIoU in percent}}), with F
    equal to mIoU and, with ``shuffled_gap``, a shuffled-audio mIoU 10 * seed points lower."""
    seeds = sorted({seed for per_seed in values.values() for seed in per_seed})
    for index, (row, seed) in enumerate(itertools.product(values, seeds)):
        run = root / str(index)
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"row={row}", f"seed={seed}"]),
                       run / ".hydra/overrides.yaml")  # fmt: skip
        config = {"seed": seed, "data": {"task": task, "synthetic": None},
                  "report": {"row": row, **report_config}}  # fmt: skip
        OmegaConf.save(OmegaConf.create(config), run / "config.yaml")
        value = values[row][seed] / 100
        metrics = {"test/miou": value, "test/f": value}
        if shuffled_gap:
            metrics["test_shuffled/miou"] = value - 0.1 * seed
        (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "task": task,
                                                      "seed": seed}))  # fmt: skip


def test_the_claims_section_pairs_rows_by_seed_and_gives_verdicts(tmp_path):
    """Three rows x three seeds with known mIoU: each claim's paired difference, interval and
    verdict by hand, in report.md, report.csv and the claims chart."""
    paper = {
        "Baseline": {"ms3": {"f": 60.0, "miou": 50.0}},
        "BAVD only": {"ms3": {"f": 70.0, "miou": 63.0}},
        "AVSAC (ours)": {"ms3": {"f": 71.0, "miou": 64.0}},
    }
    miou = {  # percent, per seed
        "Baseline": {1: 40.0, 2: 42.0, 3: 41.0},
        "BAVD only": {1: 71.0, 2: 67.0, 3: 66.7},
        "AVSAC (ours)": {1: 70.1, 2: 64.9, 3: 63.3},
    }
    write_seeded_runs(tmp_path, "ms3", miou, {"paper": paper}, shuffled_gap=True)
    files = report(tmp_path)
    text = files["markdown"].read_text()
    # Against the baseline: differences 30.1, 22.9, 22.3 -> mean 25.1, sd 4.3405, half-width
    # 4.3027 * 4.3405 / sqrt(3) = 10.782: [14.32, 35.88], wholly above 0 as the paper says.
    assert ("| AVSAC (ours) > Baseline | MS3 | mIoU | +14.00 | +25.10 | [+14.32, +35.88] | 3 | "
            "supported |") in text  # fmt: skip
    # Against BAVD only: -0.9, -2.1, -3.4 -> mean -2.13, [-5.24, +0.97]: spans 0.
    assert ("| AVSAC (ours) > BAVD only | MS3 | mIoU | +1.00 | -2.13 | [-5.24, +0.97] | 3 | "
            "unresolved (resolvable: ±3.11) |") in text  # fmt: skip
    # The listening gap is the same (10 * seed points) in every row: a difference of 0.
    assert "| Baseline | MS3 | listening gap (mIoU, true - shuffled audio) | +0.00 |" in text
    with files["csv"].open() as handle:
        rows = {line["setting"]: line for line in csv.DictReader(handle)}
    name = "MS3 mIoU: AVSAC (ours) - row"
    assert rows["Baseline"][f"{name} verdict"] == "supported"
    assert float(rows["BAVD only"][f"{name} ci low"]) == pytest.approx(-5.2393, abs=1e-4)
    assert rows["AVSAC (ours)"][f"{name} n"] == "0"  # no difference with itself
    assert Image.open(files["claims"]).size[0] > 0


def test_a_contradicted_claim_and_a_named_reference_row(tmp_path):
    paper = {"A": {"s4": {"miou": 80.0}}, "B": {"s4": {"miou": 70.0}}}
    values = {"A": {1: 50.0, 2: 51.0, 3: 52.0}, "B": {1: 60.0, 2: 60.5, 3: 62.0}}
    write_seeded_runs(tmp_path, "s4", values, {"paper": paper, "reference": "A"})
    text = report(tmp_path)["markdown"].read_text()
    # -10, -9.5, -10 -> mean -9.83, sd 0.2887, half-width 0.717: wholly below 0, the paper +10.
    assert "| A > B | S4 | mIoU | +10.00 | -9.83 | [-10.55, -9.12] | 3 | contradicted |" in text


def test_the_reference_row_can_be_named_for_runs_whose_config_names_none(tmp_path, capsys):
    """Multiruns made before ``report.reference`` existed: no claims by default, and
    ``--reference`` picks the row; a name that is no row is refused with the rows."""
    paper = {"A": {"s4": {"miou": 80.0}}, "B": {"s4": {"miou": 70.0}}}
    values = {"A": {1: 50.0, 2: 51.0, 3: 52.0}, "B": {1: 60.0, 2: 60.5, 3: 62.0}}
    write_seeded_runs(tmp_path, "s4", values, {"paper": paper})
    assert "## Claims" not in report(tmp_path)["markdown"].read_text()
    assert main([str(tmp_path), "--reference", "B"]) == 0
    # B - A: +10, +9.5, +10 against the paper's -10.
    assert ("| B < A | S4 | mIoU | -10.00 | +9.83 | [+9.12, +10.55] | 3 | contradicted |"
            in (tmp_path / "report.md").read_text())  # fmt: skip
    assert main([str(tmp_path), "--reference", "C"]) == 2
    assert "--reference='C' is no row of this table (A, B)" in capsys.readouterr().err


def test_a_second_report_against_another_row_goes_to_its_own_folder(tmp_path):
    """``--out``: the first report stays as it was, the second is written where it is told."""
    paper = {"A": {"s4": {"miou": 80.0}}, "B": {"s4": {"miou": 70.0}}}
    values = {"A": {1: 50.0, 2: 51.0, 3: 52.0}, "B": {1: 60.0, 2: 60.5, 3: 62.0}}
    write_seeded_runs(tmp_path / "sweep", "s4", values, {"paper": paper, "reference": "A"})
    first = report(tmp_path / "sweep")["markdown"].read_bytes()
    assert main([str(tmp_path / "sweep"), "--reference", "B", "--out", str(tmp_path / "vs_b")]) == 0
    assert (tmp_path / "sweep" / "report.md").read_bytes() == first
    assert "| B < A | S4 | mIoU | -10.00 | +9.83 |" in (tmp_path / "vs_b" / "report.md").read_text()
    assert sorted(p.name for p in (tmp_path / "vs_b").iterdir()) == [
        "report.csv", "report.md", "report_claims.png", "report_test_f.png", "report_test_miou.png",
    ]  # fmt: skip


def test_a_sweep_with_a_test_audio_share_and_no_validation_one_is_reported(tmp_path):
    """Runs that record ``test/audio_share`` but no ``val/audio_share`` (no validation pair to
    swap, or fitting skipped): the test value is the column, as when both are there."""
    write_seeded_runs(tmp_path, "s4", {"A": {1: 50.0, 2: 52.0}}, {})
    for index, share in enumerate((0.2, 0.4)):
        metrics_file = tmp_path / str(index) / "metrics.json"
        record = json.loads(metrics_file.read_text())
        record["metrics"]["test/audio_share"] = share
        metrics_file.write_text(json.dumps(record))
    files = report(tmp_path)
    with files["csv"].open() as handle:
        (row,) = csv.DictReader(handle)
    assert float(row["S4 audio share mean"]) == pytest.approx(0.3)
    assert not any("val" in column for column in row)


def edit_record(run: Path, **facts) -> None:
    """Set ``facts`` in a run's metrics.json, as another checkout or environment would have."""
    record = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**record, **facts}))


def test_a_cell_of_runs_of_different_code_or_libraries_is_marked(trained_runs, tmp_path):
    """One seed run with uncommitted changes on the other's commit (another version: its code
    is not the commit's) and another torch and Lightning: every cell of the row says so, with
    the runs."""
    directory = tmp_path / "multirun"
    shutil.copytree(trained_runs, directory, ignore=shutil.ignore_patterns("report*"))
    recorded = json.loads((directory / "0" / "metrics.json").read_text())
    edit_record(directory / "0", commit="0123456789ab+dirty")
    edit_record(directory / "1", commit="0123456789ab", torch="2.0.0", lightning="2.0.0")
    files = report(directory)
    text = files["markdown"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| all runs |"))
    values = row.split(" | ")[1:-1]  # F, mIoU, shuffled-audio mIoU, audio share: both runs'
    assert len(values) == 4 and all(value.endswith(" †1") for value in values)
    mix = (
        "commit `0123456789ab+dirty` (run `0`), `0123456789ab` (run `1`); "
        f"torch `{recorded['torch']}` (run `0`), `2.0.0` (run `1`); "
        f"Lightning `{recorded['lightning']}` (run `0`), `2.0.0` (run `1`)"
    )
    assert f"- †1 all runs, SynthAVS-MS3: {mix}" in text
    assert "† The cell averages runs of different code or libraries" in text
    assert "1 of the runs ran with uncommitted changes (`+dirty`: `0`)" in text
    with files["csv"].open() as handle:
        (line,) = (r for r in csv.DictReader(handle) if r["setting"] == "all runs")
    assert line["SynthAVS-MS3 runs differ in"] == mix.replace("`", "")


def test_a_claim_that_pairs_runs_of_different_code_is_marked(tmp_path):
    paper = {"A": {"s4": {"miou": 80.0}}, "B": {"s4": {"miou": 70.0}}}
    values = {"A": {1: 80.0, 2: 81.0, 3: 82.0}, "B": {1: 70.0, 2: 70.5, 3: 72.0}}
    write_seeded_runs(tmp_path, "s4", values, {"paper": paper, "reference": "A"})
    for index in range(6):  # A's runs are 0-2, B's 3-5
        edit_record(tmp_path / str(index), commit="aaaa" if index < 3 else "bbbb")
    text = report(tmp_path)["markdown"].read_text()
    assert "| A > B | S4 | mIoU | +10.00 | +10.17 | [+9.45, +10.88] | 3 | supported ‡1 |" in text
    assert (
        "- ‡1 A and B, S4: commit `aaaa` (runs `0`, `1`, `2`), `bbbb` (runs `3`, `4`, `5`)" in text
    )
    assert "†" not in text  # each cell's own runs share their commit
