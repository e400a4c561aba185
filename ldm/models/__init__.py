"""Layer 4: the networks and the model container: U-Net, autoencoder, text encoders (open_clip parts, SD 1.x CLIP),
long prompts, the upscaler's noise augmentation, tiled VAE, and LatentDiffusion with its conditioning kinds.
"""
