"""Layer 7: model files as a whole: which model a checkpoint holds (detect), conversion, LoRA merging, derived models
(the inpainter and upscaler shipped as a change to the default), the default model's variants, and diffusers folders
in and out.
"""
