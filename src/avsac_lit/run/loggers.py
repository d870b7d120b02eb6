"""The run's loggers, checked before they start: W&B is asked whether its server answers, and logs
offline when it does not (a job on a node without internet would otherwise wait ~100 s and stop).
"""

from __future__ import annotations

import functools
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

# Where wandb.init connects unless WANDB_BASE_URL says otherwise, and how long the check waits
# for it (wandb itself waits about 100 s, then stops the run).
WANDB_DEFAULT_URL = "https://api.wandb.ai"


WANDB_PROBE_TIMEOUT_S = 5.0


WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")


@functools.cache
def unreachable(url: str) -> str | None:
    """Why ``url`` cannot be reached from this machine (through the proxies the environment
    names, as wandb goes), or None when it answers at all (an HTTP error status is an answer).
    Asked once per process: the jobs of a multirun share the answer."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=WANDB_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        return str(error.reason)
    except (OSError, ValueError) as error:  # a timeout while reading; a malformed URL
        return str(error) or type(error).__name__


def wandb_offline_unless_reachable(cfg: DictConfig) -> None:
    """Switch ``cfg.logger``'s W&B logger to offline when the W&B server cannot be reached, with
    a warning that says where the offline run goes and how to upload it. On a cluster node
    without internet, wandb.init would wait about 100 s and stop the run (after its wait in the
    queue); offline, nothing is lost: ``wandb sync`` uploads the same run later. Not checked
    under WANDB_MODE=offline (or disabled) or with ``offline: true``."""
    loggers = cfg.get("logger")
    if not isinstance(loggers, DictConfig):
        return
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_OFFLINE_MODES:
        return
    for node in loggers.values():
        is_wandb = isinstance(node, DictConfig) and str(node.get("_target_")).endswith(
            "WandbLogger"
        )
        if not is_wandb or node.get("offline"):
            continue
        url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
        reason = unreachable(url)
        if reason is None:
            continue
        with open_dict(node):
            node.offline = True
        runs = Path(node.get("save_dir") or os.environ.get("WANDB_DIR") or ".") / "wandb"
        log.warning(
            "W&B at %s cannot be reached from this machine (%s): this run logs to W&B offline "
            "instead, into %s/offline-run-*. Upload it later from a machine with network: "
            "wandb sync %s/offline-run-*. Set WANDB_MODE=offline to go offline without this "
            "check, or logger=csv for no W&B.",
            url, reason, runs, runs,
        )  # fmt: skip
