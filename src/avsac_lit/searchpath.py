"""Puts the repository's ``experiments/`` folder on Hydra's config search path.

The paper-table recipes (``experiments/table/*.yaml``) and the rows they sweep
(``experiments/setting/*.yaml``) live beside their results rather than under ``conf/``; with this
plugin registered, ``+table=NAME`` and ``setting=NAME`` work from any working directory, in the
command line and in the compose API alike.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


class ExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="avsac-lit-experiments", path=f"file://{EXPERIMENTS_DIR}")


def register() -> None:
    """Idempotent: Hydra keeps one entry per plugin class."""
    Plugins.instance().register(ExperimentsSearchPath)
