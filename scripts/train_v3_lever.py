"""`ldm train` with two v3 levers (issue 38) the library does not offer, patched in for a measurement only.

--joint-text-lr LR   the text encoder trains with the U-Net (as the LDM paper's text-to-image model did), at
                     its own learning rate (the U-Net keeps training.lr); captions are never cached (memory or
                     training.cache_dir), since a caption's context changes as the encoder trains. The export
                     holds the trained encoder.
--min-snr GAMMA      min-SNR loss weighting (Hang et al. 2023) for eps prediction: each sample's squared error
                     weighted by min(SNR_t, GAMMA) / SNR_t, SNR_t = abar_t / (1 - abar_t). Training only: the
                     validation loss stays the plain one, so runs are compared on one scale.

Everything else is `ldm train` as it is; a run resumes with the same flags and --resume.

    python scripts/train_v3_lever.py --joint-text-lr 2e-5 -- --config configs/emoji/v3-joint.yaml
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def patch(joint_text_lr: float | None, min_snr: float | None) -> None:
    from ldm.training.ldm_module import LatentDiffusionModule

    init = LatentDiffusionModule.__init__

    def __init__(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        self.v3_joint_text_lr, self.v3_min_snr = joint_text_lr, min_snr
        if joint_text_lr is not None:
            model.text_encoder.requires_grad_(True)

    def encode_captions(self, captions):
        if self.v3_joint_text_lr is None:
            return encode_captions_cached(self, captions)
        # Never cached (the encoder changes every step), and not through model.encode_text, which runs without grad.
        return self.model.text_encoder(list(captions))

    def configure_optimizers(self):
        if self.v3_joint_text_lr is None:
            return configure(self)
        text = [p for p in self.model.text_encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in text}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        opt = torch.optim.AdamW(
            [{"params": rest}, {"params": text, "lr": self.v3_joint_text_lr}],
            lr=self.lr,
            weight_decay=self.weight_decay,
            betas=self.betas,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule(opt), "interval": "step"}}

    def loss(self, batch, generator=None, drop=True):
        if self.v3_min_snr is None or not self.training:
            return plain_loss(self, batch, generator, drop)
        images = batch["image"].to(self.device)
        latents = self.latents(images, generator, batch.get("key"))
        captions = list(batch["caption"])
        if drop:
            captions = self.dropped_captions(captions, generator)
        context = self.encode_captions(captions)
        p = self.model.parameterisation()
        t, noise, x_t = p.noised(latents, generator)
        out = self._unet_fn(x_t, t, context=context)
        per_sample = F.mse_loss(out.float(), p.target(latents, noise, t).float(), reduction="none").mean(dim=(1, 2, 3))
        abar = p.alphas_cumprod.to(t.device)[t].float()
        snr = abar / (1 - abar)
        weight = snr.clamp(max=self.v3_min_snr) / snr
        return (weight * per_sample).mean()

    configure, plain_loss = LatentDiffusionModule.configure_optimizers, LatentDiffusionModule.loss
    encode_captions_cached = LatentDiffusionModule.encode_captions
    LatentDiffusionModule.encode_captions = encode_captions
    LatentDiffusionModule.__init__ = __init__
    LatentDiffusionModule.configure_optimizers = configure_optimizers
    LatentDiffusionModule.loss = loss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--joint-text-lr", type=float, default=None)
    p.add_argument("--min-snr", type=float, default=None)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the ldm train arguments")
    args = p.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    patch(args.joint_text_lr, args.min_snr)
    from ldm.interfaces.cli.main import main as cli_main

    return cli_main(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
