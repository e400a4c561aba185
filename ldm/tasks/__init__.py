"""Layer 8: what a user asks for: one composition for every task (base: prepare -> Conditioning -> denoise), txt2img,
img2img, inpaint / outpaint, upscale, latent walks.
"""
