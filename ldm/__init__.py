"""ldm: a small latent diffusion toolkit compatible with Stable Diffusion 2.x."""

__version__ = "0.1.0"  # pyproject.toml's [project] version; `ldm --version` prefers the installed one
