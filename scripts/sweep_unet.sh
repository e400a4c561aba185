#!/usr/bin/env bash
# Measure small before training big: the default model's U-Net at three sizes on the final autoencoder and
# text encoder, same data, steps and seed; `python scripts/unet_sweep_table.py runs/sweep-unet/*` prints the
# table (validation loss at fixed noise, parameters, seconds per step).
#   s: ch 64, mult [1,2,2], attention at 8x8 and 4x4     m: ch 64, mult [1,2,2,2], attention at 8x8, 4x4, 2x2
#   l: ch 96, mult [1,2,2], attention at 8x8 and 4x4
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-400}
common=(trainer.max_steps=$steps trainer.val_check_interval=$steps logging.sample_every_n_steps=0
        logging.checkpoint_every_n_steps=$steps trainer.log_every_n_steps=25)
u=model.params.unet_config.params
run() {  # name, overrides...
  local name=$1; shift
  local start=$SECONDS
  ldm train --config configs/emoji/ldm.yaml "${common[@]}" logging.run_dir=runs/sweep-unet/$name "$@" ${EXTRA:-}
  echo $((SECONDS - start)) > runs/sweep-unet/$name/wall_s
}
run s
run m "$u.channel_mult=[1, 2, 2, 2]" "$u.attention_resolutions=[2, 4, 8]"
run l $u.model_channels=96
