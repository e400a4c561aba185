"""Layer 2: bytes on disk <-> tensors and images: checkpoints (safetensors, safe pickles), PNGs and their infotext, and
the key maps between our tensor names and Hugging Face's / diffusers'.
"""
