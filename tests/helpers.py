"""Composing the training and evaluation configs in tests, shrunk to CPU seconds."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# The real architecture at its smallest: 32 px, width 32, one decoder layer, 4 queries.
TINY_RUN = [
    "data.img_size=32",
    "data.num_workers=0",
    "data.synthetic=null",
    "model.dim=32",
    "model.net.num_queries=4",
    "model.net.generator_layers=1",
    "model.net.mlp_hidden=32",
    "model.bavd.num_layers=1",
    "model.bavd.hidden_dim=64",
    "model.bavd.heads=4",
    "extras.print_config=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "~logger",
]


def compose_config(name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/{name}.yaml`` as the command line would, with Hydra's runtime config set so
    that ``${hydra:...}`` resolves; the run directory is ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: ${hydra:...} reads the HydraConfig set above
    return cfg


def tiny_run(
    task: str, root: Path, output_dir: Path, extra: list[str] = (), name: str = "train"
) -> DictConfig:
    """A synthetic experiment on a test tree, with the tiny model and no logger."""
    overrides = [f"+experiment=synthetic_{task}", f"data.root={root}", *TINY_RUN, *extra]
    if name == "eval" or any(o.startswith("+debug") for o in extra):
        overrides = [o for o in overrides if "callbacks" not in o]  # none to remove
    if any(o.startswith("logger=") for o in extra):
        overrides.remove("~logger")
    return compose_config(name, overrides, output_dir)
