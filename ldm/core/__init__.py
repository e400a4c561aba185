"""Layer 1, the floor: the error base class, where the shipped files are, YAML configs -> modules (and the table of
moved target names), devices, memory limits, masks, building modules without random init. Imports nothing of ldm
above it.
"""
