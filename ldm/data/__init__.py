"""Datasets: the captioned image folder format and the emoji dataset builder."""
