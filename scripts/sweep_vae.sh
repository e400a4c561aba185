#!/usr/bin/env bash
# Measure small before training big: the default model's autoencoder at three latent shapes, same
# steps and data, compared on held-out reconstruction (scripts/sweep_table.py prints the table).
#   f4c4: 64 px -> 16x16x4 (f=4)   f8c4: 8x8x4 (f=8, SD's shape)   f8c8: 8x8x8 (f=8, 8 channels)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-250}
common=(trainer.max_steps=$steps trainer.val_check_interval=$steps logging.sample_every_n_steps=$steps
        logging.checkpoint_every_n_steps=$steps)
ldm train --config configs/emoji/vae.yaml "${common[@]}" logging.run_dir=runs/sweep-vae/f8c8 "$@"
ldm train --config configs/emoji/vae.yaml "${common[@]}" logging.run_dir=runs/sweep-vae/f8c4 \
    model.params.embed_dim=4 model.params.ddconfig.z_channels=4 "$@"
ldm train --config configs/emoji/vae.yaml "${common[@]}" logging.run_dir=runs/sweep-vae/f4c4 \
    model.params.embed_dim=4 model.params.ddconfig.z_channels=4 "model.params.ddconfig.ch_mult=[1, 2, 2]" "$@"
