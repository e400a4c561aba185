"""Layer 11: training: Lightning modules for the U-Net, the autoencoder, CLIP, distillation and the editing models; the
training config and its checks; data streams, resume, export, callbacks.
"""
