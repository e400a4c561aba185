"""Layer 9: small models for teaching and the app: diffusion on 2-D points, the toy VDM, the class-conditional toy with
a classifier, GAN / VAE / diffusion compared, and the toy model file.
"""
