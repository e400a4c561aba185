#!/usr/bin/env bash
# Reproduce the shipped default emoji model from scratch: data, text encoder, autoencoder, diffusion model.
# About 2 hours on a 2-core CPU; add trainer.accelerator=gpu (and larger batches) for minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

ldm data emoji --out data/emoji                                   # ~3,650 captioned 64 px emoji (needs fonts-noto-color-emoji)
python -m ldm.training.clip --data data/emoji --out checkpoints/emoji --steps 200 --batch-size 64
ldm train --config configs/emoji/vae.yaml "$@"                    # -> runs/emoji-vae/vae.safetensors
ldm train --config configs/emoji/ldm.yaml "$@"                    # -> runs/emoji-ldm/model.safetensors + model.yaml
python scripts/ship_default_model.py runs/emoji-ldm               # -> checkpoints/emoji/model.safetensors (fp16) + model.yaml
