"""The Hydra data configs compose and build the data module they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from avsac_lit.data import AVSDataModule
from avsac_lit.data.logmel import LogMelCache, default_cache_dir
from avsac_lit.run.assemble import compose_config
from tests.helpers import CONF


@pytest.mark.parametrize(
    "name", ["s4", "ms3", "avss", "synthetic_s4", "synthetic_ms3", "synthetic_avss"]
)
def test_data_configs_instantiate(name, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSAC_ROOT", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+data={name}", "+paths=default", "paths.output_dir=out"])
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, AVSDataModule)
    task = name.removeprefix("synthetic_")
    assert datamodule.hparams.task == task
    assert datamodule.hparams.eval_batch_size == 2
    assert str(datamodule.hparams.root).startswith(str(tmp_path / "data"))
    assert (datamodule.hparams.synthetic is not None) == name.startswith("synthetic")


def test_synthetic_config_generates_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSAC_ROOT", str(tmp_path))
    overrides = [
        "+data=synthetic_s4",
        "+paths=default",
        "paths.output_dir=out",
        "data.synthetic.videos=4",
        "data.synthetic.size=32",
        "data.img_size=32",
        "data.num_workers=0",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["frames"].shape == (1, 5, 3, 32, 32)
    assert (tmp_path / "data" / "synthavs-s4" / "manifest.json").is_file()


def test_runs_and_the_precompute_tool_share_one_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSAC_CACHE_DIR", str(tmp_path / "moved"))
    cfg = compose_config("train", ["+experiment=avss"])
    assert Path(cfg.data.cache_dir) == default_cache_dir() == tmp_path / "moved"
    monkeypatch.delenv("AVSAC_CACHE_DIR")
    monkeypatch.delenv("AVSAC_ROOT", raising=False)
    cfg = compose_config("train", ["+experiment=avss"])
    assert Path(cfg.data.cache_dir) == default_cache_dir() == Path("data/.cache")
    cache = LogMelCache(default_cache_dir())
    assert cache.cache_dir == Path("data/.cache/log_mel")  # log-mels in their own sub-folder
