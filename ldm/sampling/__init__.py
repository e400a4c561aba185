"""Layer 5: from a denoiser to samples: the samplers, denoiser wrappers (guidance, classifier guidance), the learned-
variance sampler, and SamplingOptions, the one checked way into them.
"""
