"""Config `target:` names are a file format: every name written before the re-layout (issue 37) still loads.

OLD_NAMES is every `ldm.<module>.<Name>` spelt in the repository at commit 72081d4, the last before the move
(`git grep -ho "ldm\\.[a-z_.]*[A-Z][A-Za-z]*" 72081d4`, the original SD repository's own names left out: they
keep their table in ldm.core.config). Config targets load through ldm.core.config.target_class; every other
name's module is found through the same table of moved modules.
"""

import importlib
from pathlib import Path

import pytest

import ldm
from ldm.core.config import _OURS, MOVED_MODULES, canonical_target, target_class

# rewrite: off
OLD_NAMES = (
    "ldm.classifier_guidance.ClassifierGuidedDenoiser ldm.cli.COMMANDS ldm.commands.common.DefaultsHelpFormatter "
    "ldm.conditioning.LowResNoiseAugmentation ldm.data.folder.CaptionedImageFolder ldm.defaults.DEVICE "
    "ldm.denoisers.CFGDenoiser ldm.diffusion.VPParameterisation ldm.evaluate.Judge "
    "ldm.likelihood.LearnedVarianceParameterisation ldm.likelihood.VARIANCES ldm.lora_layers.GROUPS "
    "ldm.model.CONDITIONING ldm.model.LatentDiffusion ldm.text_encoder.FrozenCLIPEmbedder "
    "ldm.text_encoder.FrozenOpenCLIPEmbedder ldm.text_encoder.FrozenTextEncoder ldm.text_encoder.OpenCLIP "
    "ldm.tiling.SharedGroupNormStats ldm.toy_classes.ConditionalToyDiffusion ldm.toy_classes.ToyClassifier "
    "ldm.training.config.AutoencoderTraining ldm.training.config.ClipTraining ldm.training.config.DiffusionTraining "
    "ldm.training.data.SampleStream ldm.training.label_module.ClassConditionalModule "
    "ldm.training.ldm_module.LatentDiffusionModule ldm.training.run.TrainingStopped ldm.unet.UNetModel "
    "ldm.vae.AutoencoderKL"
).split()
# rewrite: on
OLD_TARGETS = [n for n in OLD_NAMES if canonical_target(n) in _OURS]


def test_every_old_config_target_loads_as_its_new_name():
    assert len(OLD_TARGETS) == 7  # the seven names of our own target table before the move
    for old in OLD_TARGETS:
        new = canonical_target(old)
        assert new != old and target_class(old) is target_class(new)


@pytest.mark.parametrize("old", OLD_NAMES)
def test_every_old_name_has_a_new_home(old):
    if old in OLD_TARGETS:
        assert target_class(old) is not None
        return
    module, _, name = canonical_target(old).rpartition(".")
    assert hasattr(importlib.import_module(module), name), f"{old} -> {module}.{name}"


def test_new_names_are_their_own_and_old_modules_are_gone():
    assert canonical_target("ldm.models.unet.UNetModel") == "ldm.models.unet.UNetModel"
    root = Path(ldm.__file__).resolve().parents[1]
    for old in (
        MOVED_MODULES
    ):  # gone, or now the name of a subpackage (ldm.diffusion.parameterisation, ldm.sampling.options, ...)
        assert not (root / (old.replace(".", "/") + ".py")).exists(), old
