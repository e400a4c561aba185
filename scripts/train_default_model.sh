#!/usr/bin/env bash
# Reproduce the default emoji model (v2) from scratch: data, text encoder, judge, autoencoder, diffusion model.
# On the 2-core CPU (bf16 autocast, one thread per job): text encoder ~35 min, judge ~30 min, autoencoder ~40 min,
# diffusion ~6 h for 20,000 steps; docs/default-model-v2.md logs each piece. Every `ldm train` step resumes
# with --resume after an interruption. Add trainer.accelerator=gpu trainer.precision=bf16-mixed for one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

ldm data emoji-sources                                             # pinned npm emoji designs (checksums verified)
ldm data emoji --out data/emoji                                    # 5 designs x 3,655 emoji at 64 px; fixed held-out split
ldm train --config configs/emoji/clip.yaml "$@"                    # -> runs/emoji-clip/clip.safetensors (text encoder)
ldm train --config configs/emoji/judge.yaml "$@"                   # -> runs/emoji-judge/clip.safetensors (ldm eval's judge)
ldm train --config configs/emoji/vae.yaml "$@"                     # -> runs/emoji-vae/vae.safetensors
ldm train --config configs/emoji/ldm.yaml "$@"                     # -> runs/emoji-ldm/model.safetensors + model.yaml
python scripts/ship_default_model.py runs/emoji-ldm                # -> checkpoints/emoji/model.safetensors (fp16) + model.yaml
