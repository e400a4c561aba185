"""Inference backends: what runs the networks' calls (ldm.core.defaults.BACKENDS).

"torch" runs the modules as they are; "openvino" (the optional extra, pip install ".[openvino]") exports the U-Net,
the autoencoder's decoder and the text encoder once and runs them on OpenVINO's CPU runtime
(ldm.backends.openvino_networks.use_backend). Samplers, guidance and tasks are the same on every backend.
"""
