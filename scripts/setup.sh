#!/usr/bin/env bash
# Set up this checkout on a fresh machine: the Debian packages some features and tests need, a virtual
# environment in .venv holding the package with its dev, app and serve extras, and the pinned emoji SVG designs.
#
#   bash scripts/setup.sh && . .venv/bin/activate
#
# Safe to run again: installed packages, .venv and already verified designs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

# The emoji font and Unicode's emoji list for the dataset builder; Chromium for the app's browser test.
DEBIAN_PACKAGES=(fonts-noto-color-emoji unicode-data chromium)

say() { echo "setup: $*"; }

if command -v apt-get >/dev/null; then
  missing=()
  for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  # `python3 -m venv` needs ensurepip, which Debian ships apart, in python3-venv.
  python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
  if ((${#missing[@]})); then
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
      as_root=(sudo)
    fi
    say "installing Debian packages: ${missing[*]}"
    ${as_root[@]+"${as_root[@]}"} apt-get update -qq
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  say "no apt-get: install the Noto Color Emoji font, Unicode's emoji-test.txt and Chromium yourself (the tests that need them skip)"
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
say "installing ldm with its dev, app, serve and openvino extras into .venv"
pip install -q -e ".[dev,app,serve,openvino]"
# k-diffusion, whose sampling.py tests/sampling/test_k_diffusion_parity.py runs beside ours. Its package requires its
# training and evaluation stack (wandb, clean-fid, scikit-image, kornia, ...), which would pull numpy back to 1.x;
# the parity test imports k_diffusion.sampling alone, whose imports (torchsde, torchdiffeq, scipy) the dev extra
# holds. So it comes without its requirements.
say "installing k-diffusion (its sampling module, for the sampler parity test) into .venv"
pip install -q --no-deps k-diffusion==0.1.1.post1

# The emoji SVG designs (pinned npm packages, checksums verified) for `ldm data emoji` and its tests.
if command -v npm >/dev/null; then
  say "fetching the emoji SVG designs"
  ldm data emoji-sources
else
  say "no npm: the emoji SVG designs are not fetched (their tests skip); with npm: ldm data emoji-sources"
fi

say "done; activate the environment with: . .venv/bin/activate"
