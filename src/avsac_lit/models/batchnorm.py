"""BatchNorm whose batch statistics span every process of a distributed run, on any device.

torch's ``SyncBatchNorm`` refuses CPU tensors, so a DDP run on CPUs (``trainer=ddp_sim``) would
normalise each process's half of the batch by its own statistics and train another model than a
single process with the whole batch. This layer all-reduces the sums instead (through
``torch.distributed.nn``, so gradients flow back across processes as they do on one process);
outside a process group, or in eval mode, it is ``nn.BatchNorm1d``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


class DistributedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over [N, C] inputs with statistics over all processes' N.

    The state dict is ``nn.BatchNorm1d``'s, so checkpoints load either way.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        # Two passes, as a single process computes them: the mean first, then the spread about it.
        count = dist_fn.all_reduce(x.new_tensor([float(len(x))]))
        mean = dist_fn.all_reduce(x.sum(dim=0)) / count  # [C]
        variance = dist_fn.all_reduce((x - mean).square().sum(dim=0)) / count  # [C], biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (
                    self.momentum
                    if self.momentum is not None
                    else (1.0 / float(self.num_batches_tracked))
                )
                unbiased = variance * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        normalised = (x - mean) / torch.sqrt(variance + self.eps)
        return normalised * self.weight + self.bias if self.affine else normalised
