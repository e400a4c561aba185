"""Layer 10: datasets: the captioned image folder format, WebDataset shards, the emoji and photo dataset builders, and
the degradations that make the upscaler's low-res inputs.
"""
