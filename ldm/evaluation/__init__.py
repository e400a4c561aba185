"""Layer 12: judging models: image metrics and judges, the ldm eval report, prompt and edit evaluation, likelihoods in
bits per dimension.
"""
