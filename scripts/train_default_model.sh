#!/usr/bin/env bash
# Reproduce the shipped default emoji model from scratch: data, text encoder, autoencoder, diffusion model.
# About 3¾ hours on a 2-core CPU (CLIP 13 min, VAE 50 min, diffusion 2¾ h); add trainer.accelerator=gpu to the
# ldm train steps to use one GPU (not measured here).
set -euo pipefail
cd "$(dirname "$0")/.."

ldm data emoji --out data/emoji                                   # ~3,650 captioned 64 px emoji (needs fonts-noto-color-emoji)
ldm clip --data data/emoji --out checkpoints/emoji --steps 200 --batch-size 64
ldm train --config configs/emoji/vae.yaml "$@"                    # -> runs/emoji-vae/vae.safetensors
ldm train --config configs/emoji/ldm.yaml "$@"                    # -> runs/emoji-ldm/model.safetensors + model.yaml
python scripts/ship_default_model.py runs/emoji-ldm               # -> checkpoints/emoji/model.safetensors (fp16) + model.yaml
