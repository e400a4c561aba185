#!/usr/bin/env bash
# Reproduce the default emoji model (v2) from scratch: data, text encoder, judge, autoencoder, diffusion model.
# On the 2-core CPU (bf16 autocast, one thread per job): text encoder ~35 min, judge ~30 min, autoencoder ~40 min,
# diffusion ~6 h for 20,000 steps; docs/default-model-v2.md logs each piece. Every `ldm train` step resumes
# with --resume after an interruption. Add trainer.accelerator=gpu trainer.precision=bf16-mixed for one GPU; on a CPU
# without AVX-512 BF16 add trainer.precision=32-true (bf16 is emulated there, many times slower).
set -euo pipefail
cd "$(dirname "$0")/.."

ldm data emoji-sources                                             # pinned npm emoji designs (checksums verified)
ldm data emoji --out data/emoji                                    # 5 designs x 3,655 emoji at 64 px; fixed held-out split
ldm train --config configs/emoji/clip.yaml "$@"                    # -> runs/emoji-clip/clip.safetensors (text encoder)
ldm train --config configs/emoji/judge.yaml "$@"                   # -> runs/emoji-judge/clip.safetensors (ldm eval's judge)
ldm train --config configs/emoji/vae.yaml "$@"                     # -> runs/emoji-vae/vae.safetensors
ldm train --config configs/emoji/ldm.yaml "$@"                     # -> runs/emoji-ldm/model.safetensors + model.yaml
python scripts/ship_default_model.py runs/emoji-ldm                # -> checkpoints/emoji/model.safetensors (fp16) + model.yaml

# The models derived from it (issue 20), each shipped as what differs from model.safetensors (ldm.formats.derived):
ldm train --config configs/emoji/inpaint.yaml "$@"                 # -> runs/emoji-inpaint/lora.safetensors (LoRA + widened input)
python scripts/ship_derived_model.py inpaint runs/emoji-inpaint    # -> checkpoints/emoji/inpaint.safetensors + inpaint.yaml
ldm data photos --out data/photos                                  # 27 freely licensed photos from pinned Debian packages
ldm data emoji --size 128 --styles "twemoji,openmoji,fluent flat,fluent color" --out data/emoji-128   # vector designs only
ldm train --config configs/emoji/upscaler-vae.yaml "$@"            # -> runs/upscaler-vae/vae.safetensors (f=4, 8 channels)
python scripts/ship_derived_model.py upscaler-vae runs/upscaler-vae  # -> checkpoints/emoji/upscaler-vae.safetensors (fp16)
ldm train --config configs/emoji/upscaler.yaml "$@"                # -> runs/emoji-upscaler/model.safetensors + model.yaml
python scripts/ship_derived_model.py upscale runs/emoji-upscaler   # -> checkpoints/emoji/upscaler.safetensors (U-Net) + upscaler.yaml
ldm distill --config configs/emoji/distill.yaml "$@"               # -> runs/emoji-distill/{guidance,halve-16,halve-8,halve-4}
python scripts/ship_derived_model.py student runs/emoji-distill/halve-8   # -> checkpoints/emoji/student.safetensors (the default)
