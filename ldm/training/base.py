"""What every training module shares: per-position seeds, the learning-rate warm-up, resumable counters.

`TrainingModule` is the base of the diffusion, autoencoder and CLIP modules:

- `batches_seen` counts the micro-batches this rank trained on; it positions the data stream
  (ldm.training.data) and every random draw, and is kept in checkpoints under "ldm", so a resumed
  run repeats an uninterrupted one exactly;
- `position_seed(salt)` = (seed * 1_000_003 + batches_seen * 1009 + rank * 17 + salt) mod 2^63, a seed
  of (run seed, position, rank) alone, independent of anything that ran before; each kind of draw
  has its own salt;
- `lr_factor(step)`: linear warm-up over `warmup_steps` optimiser steps, then constant (CLIP adds a
  cosine decay), applied by `lr_schedule`.

EMA: the diffusion module keeps `ema`, torch's AveragedModel of the U-Net alone (ldm.training.ema), updated
after each real optimiser step. Lightning 2.6's `EMAWeightAveraging` callback was checked and not used:
- it averages the whole LightningModule (AveragedModel(pl_module)): with SD 2's frozen VAE (84M) and OpenCLIP-H
  text encoder (354M) beside a 866M U-Net, that is 438M parameters (1.7 GB fp32) copied and "averaged" for
  nothing; on the shipped emoji model (checkpoints/emoji/model.yaml, counted with sum(p.numel())) the frozen
  VAE (0.95M) and text encoder (11.3M) are 63% of its 19.4M weights, so the copy would be 2.7x the U-Net's;
- it rewrites checkpoints: the average goes to "state_dict" and the live weights to "current_model_state",
  where run checkpoints so far hold the live weights in "state_dict" and the average under `ema.module.*`
  (tests/training/test_train_ldm.py checks that layout); every run checkpoint written until now would need converting
  before it resumes, and `check_resumable`'s strict key check would refuse them as they are;
- it has no decay warm-up (torch's get_ema_avg_fn uses a fixed decay; the reference's
  min(decay, (1 + n) / (10 + n)) would have to be passed in anyway), and it swaps the average into the model
  for validation and at the end of training, where the validation loss here is the live weights' and the
  export already writes the EMA U-Net explicitly.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class TrainingModule(pl.LightningModule):
    # Each module's own salt for its per-step generator, so two kinds of run never share a stream.
    STEP_SALT = 0

    def __init__(self, seed: int = 0, warmup_steps: int = 0, config: dict | None = None):
        super().__init__()
        self.seed = int(seed)
        self.warmup_steps = int(warmup_steps)
        self.config = config  # the resolved training config, stored in checkpoints so --resume needs no YAML
        self.batches_seen = 0  # micro-batches trained on this rank; positions the data stream and the RNG

    # ---- randomness -----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self._trainer is not None else 0

    def position_seed(self, salt: int, offset: int = 0) -> int:
        """A seed of (run seed, training position + offset, rank, salt) alone."""
        return (self.seed * 1_000_003 + (self.batches_seen + offset) * 1009 + self.rank * 17 + salt) % (2**63)

    def step_generator(self, offset: int = 0) -> torch.Generator:
        """A generator for this rank's current batch, independent of anything that ran before."""
        return torch.Generator(device=self.device).manual_seed(self.position_seed(self.STEP_SALT, offset))

    # ---- learning rate --------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Linear warm-up to the full rate over `warmup_steps` optimiser steps, then constant."""
        return min(1.0, (step + 1) / max(1, self.warmup_steps))

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step))

    # ---- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a module keeps in checkpoints beside its weights (under "ldm"); subclasses add to it."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return {"batches_seen": self.batches_seen, "config": self.config, "world_size": world}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ldm"] = self.checkpoint_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = int(checkpoint.get("ldm", {}).get("batches_seen", 0))
