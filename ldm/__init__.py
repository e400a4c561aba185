"""ldm: a small latent diffusion toolkit compatible with Stable Diffusion 2.x."""
