"""training.cache_dir: the frozen encoders' outputs on disk, on shards; the same loss, no encoder on a rerun,
and no stale entry read after the encoder's weights change."""

from __future__ import annotations

import pytest
import torch

from ldm.data.shards import expand_shards, write_shards
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import build_data, build_module
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

STEPS = 6  # one epoch of the 23 shard samples at batch 4, wrapped


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("shards")
    return expand_shards(write_shards(make_shapes_dataset(tmp / "folder", size=8, count=23), tmp / "shards", 5))


def config(tmp_path, urls: list[str], *extra: str) -> dict:
    common = [
        "data.root=null",
        "data.val_fraction=0",
        f"data.shards={urls}",
        "data.size=8",
        "data.batch_size=4",
        "data.remainder=wrap",
        "model.params.first_stage_config.params.ddconfig.resolution=8",
    ]
    return tiny_train_config("ldm", tmp_path, tmp_path / "run", common + list(extra))


def counting(module) -> dict[str, int]:
    """Count the images and captions that go through the module's encoders."""
    calls = {"vae": 0, "text": 0}
    vae_encode, text_encode = module.model.vae.encode, module.model.encode_text
    module.model.vae.encode = lambda x: (calls.__setitem__("vae", calls["vae"] + len(x)), vae_encode(x))[1]
    module.model.encode_text = lambda p: (calls.__setitem__("text", calls["text"] + len(p)), text_encode(p))[1]
    return calls


def losses(module, cfg: dict, steps: int = STEPS) -> list[torch.Tensor]:
    loader = iter(build_data(cfg).train_dataloader())
    return [module.loss(next(loader), torch.Generator().manual_seed(step)) for step in range(steps)]


def test_disk_cache_gives_the_same_loss_and_a_rerun_calls_no_encoder(tmp_path, shards):
    cache = tmp_path / "cache"
    cfg = config(tmp_path, shards)
    cached_cfg = config(tmp_path, shards, f"training.cache_dir={cache}")
    torch.manual_seed(0)
    plain = build_module(cfg)
    state = plain.state_dict()
    expected = losses(plain, cfg)

    first = build_module(cached_cfg)
    first.load_state_dict(state)
    calls = counting(first)
    for a, b in zip(expected, losses(first, cached_cfg)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert calls["vae"] == 23  # every shard sample once (the wrapped ones came back from disk)
    assert 0 < calls["text"] <= 13  # the 12 captions and "" (dropped), each once
    entries = {kind: len(list(cache.glob(f"{kind}-*/*/*.safetensors"))) for kind in ("text", "latent")}
    assert entries == {"text": calls["text"], "latent": 23}
    assert not list(cache.rglob("*.tmp"))  # written atomically: no temporary file left

    again = build_module(cached_cfg)  # a restart: a new process would see the same folder
    again.load_state_dict(state)
    calls = counting(again)
    for a, b in zip(expected, losses(again, cached_cfg)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert calls == {"vae": 0, "text": 0}
    assert again.disk_cache("latent").hits == 6 * 4 and again.disk_cache("latent").misses == 0


def test_other_encoder_weights_or_image_size_read_no_stale_entries(tmp_path, shards):
    cache = tmp_path / "cache"
    cached_cfg = config(tmp_path, shards, f"training.cache_dir={cache}")
    torch.manual_seed(0)
    first = build_module(cached_cfg)
    losses(first, cached_cfg, steps=1)

    other = build_module(cached_cfg)
    other.load_state_dict(first.state_dict())
    with torch.no_grad():  # other frozen weights: a fine-tuned VAE, another text encoder
        next(other.model.vae.parameters()).add_(0.01)
        next(other.model.text_encoder.parameters()).add_(0.01)
    calls = counting(other)
    losses(other, cached_cfg, steps=1)
    assert calls["vae"] == 4 and calls["text"] > 0  # nothing read from the first encoders' entries
    assert len(list(cache.glob("latent-*"))) == len(list(cache.glob("text-*"))) == 2
    # The same image key at another size is another image.
    keys = ["a.tar#0"]
    module = build_module(cached_cfg)
    small, large = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16)
    module.posterior(small, keys)
    calls = counting(module)
    module.posterior(large, keys)
    assert calls["vae"] == 1


def test_cache_dir_config_checks(tmp_path, shards):
    with pytest.raises(TrainConfigError, match="center_crop"):
        config(tmp_path, shards, f"training.cache_dir={tmp_path}", "data.center_crop=false")
    with pytest.raises(TrainConfigError, match="training.cache_dir=null"):
        config(tmp_path, shards, f"training.cache_dir={tmp_path}", "lora.rank=4", "lora.targets=[text]")
