"""Layer 3: the maths of diffusion, no networks: noise schedules and sigma grids, the eps / v / x0 parameterisation and
training objective, the variational bound and learned variances, guided distillation, VDM's learned schedule.
"""
