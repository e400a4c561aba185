"""The shard stream without a model: epoch layout over ranks and workers, wrap, resume positions, unreadable
samples, shard counting, and the config checks of data.shards."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.shards import count_samples, expand_shards, write_shards
from ldm.training.config_checks import TrainConfigError
from ldm.training.data import ImageTextDataModule
from ldm.training.shapes import make_shapes_dataset
from ldm.training.shard_stream import ShardStream, shard_plan
from ldm.training.tiny import tiny_train_config
from ldm.training.unreadable import DataConfigError, TooManyUnreadableImagesError, UnreadableImages


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[list[str], list[int]]:
    tmp = tmp_path_factory.mktemp("shards")
    pattern = write_shards(make_shapes_dataset(tmp / "folder", size=8, count=23), tmp / "shards", 5)
    urls = expand_shards(pattern)
    return urls, [count_samples(u) for u in urls]


def batches(plan, rank: int, steps: int, workers: int = 0, start: int = 0, unreadable=None) -> list[list[str]]:
    stream = ShardStream(plan, rank, start, size=8, unreadable=unreadable)
    loader = iter(DataLoader(stream, batch_size=plan.batch_size, num_workers=workers))
    return [[k.split("#")[1] for k in next(loader)["key"]] for _ in range(steps)]


def test_shards_are_written_counted_and_expanded(sharded, tmp_path):
    urls, counts = sharded
    assert [Path(u).name for u in urls] == [f"0000{i}.tar" for i in range(5)]
    assert counts == [5, 5, 5, 5, 3]
    # without img2dataset's _stats.json the shard is read through and counted
    Path(urls[4][: -len(".tar")] + "_stats.json").rename(tmp_path / "moved.json")
    try:
        assert count_samples(urls[4]) == 3
    finally:
        (tmp_path / "moved.json").rename(urls[4][: -len(".tar")] + "_stats.json")


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_an_epoch_gives_every_rank_equal_disjoint_steps(sharded, world, workers):
    urls, counts = sharded
    plan = shard_plan(urls, counts, world, 3, seed=5, remainder="drop")
    assert plan.steps == 23 // (3 * world) and plan.leftover == 23 - plan.steps * 3 * world
    seen = [k for rank in range(world) for batch in batches(plan, rank, plan.steps, workers) for k in batch]
    assert len(seen) == len(set(seen)) == plan.steps * 3 * world  # disjoint across ranks, nothing twice
    # worker count changes the order within a rank, not which samples the rank reads
    alone = [k for rank in range(world) for batch in batches(plan, rank, plan.steps) for k in batch]
    assert sorted(alone) == sorted(seen)


def test_wrap_covers_every_sample_and_repeats_only_the_remainder(sharded):
    urls, counts = sharded
    plan = shard_plan(urls, counts, 2, 4, seed=0, remainder="wrap")
    assert plan.steps == 3 and plan.leftover == 2 * 3 * 4 - 23
    seen = [k for rank in range(2) for batch in batches(plan, rank, plan.steps) for k in batch]
    assert len(set(seen)) == 23 and len(seen) - len(set(seen)) == plan.leftover


def test_epochs_reshuffle_the_shards(sharded):
    urls, counts = sharded
    plan = shard_plan(urls, counts, 1, 1, seed=0, remainder="drop")  # batch 1: nothing dropped
    assert plan.order(0) != plan.order(1) or plan.order(1) != plan.order(2)
    two = [k for b in batches(plan, 0, 2 * plan.steps) for k in b]
    assert sorted(two[:23]) == sorted(two[23:]) == sorted(set(two)) and two[:23] != two[23:]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_mid_epoch_continues_the_uninterrupted_one(sharded, workers):
    urls, counts = sharded
    plan = shard_plan(urls, counts, 2, 3, seed=1, remainder="drop")  # 3 steps per epoch
    whole = batches(plan, 1, 8, workers)
    for start in (1, 2, 4):
        assert batches(plan, 1, 8 - start, workers, start=start) == whole[start:]


def write_tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_unreadable_samples_are_replaced_counted_and_limited(tmp_path, caplog):
    good = [{"__key__": f"s{i}", "png": png_bytes("red"), "txt": f"red {i}".encode()} for i in range(6)]
    bad = [
        {"__key__": "broken", "png": b"not a png", "txt": b"x"},
        {"__key__": "nocaption", "png": png_bytes("blue")},
        {"__key__": "jsoncaption", "jpg": png_bytes("green"), "json": json.dumps({"caption": "green"}).encode()},
    ]
    url = write_tar(tmp_path / "a.tar", good[:2] + bad + good[2:])  # 9 samples
    plan = shard_plan([url], [count_samples(url)], 1, 3, seed=0, remainder="drop")
    unreadable = UnreadableImages(limit=2)
    with caplog.at_level(logging.WARNING):
        keys = [k for b in batches(plan, 0, 3, unreadable=unreadable) for k in b]
    # each unreadable sample's slot takes the next readable one: 9 slots, positions unchanged
    assert keys == ["s0", "s1", "jsoncaption", "jsoncaption", "jsoncaption", "s2", "s3", "s4", "s5"]
    assert len(unreadable.skipped) == 2 and "2 skipped" in caplog.text
    with pytest.raises(TooManyUnreadableImagesError, match="max_unreadable=1"):
        batches(plan, 0, 3, unreadable=UnreadableImages(limit=1))


def test_a_shard_shorter_than_its_count_is_counted_not_a_hang(tmp_path):
    url = write_tar(
        tmp_path / "short.tar", [{"__key__": f"s{i}", "png": png_bytes("red"), "txt": b"red"} for i in range(4)]
    )
    (tmp_path / "short_stats.json").write_text(json.dumps({"successes": 6}))  # claims two more than it holds
    plan = shard_plan([url], [count_samples(url)], 1, 3, seed=0, remainder="drop")
    unreadable = UnreadableImages(limit=5)
    first_epoch = batches(plan, 0, 2, unreadable=unreadable)
    assert [k for b in first_epoch for k in b][:4] == ["s0", "s1", "s2", "s3"]
    assert len(unreadable.skipped) == 2  # the two missing samples, each replaced by the next epoch's first


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data.shards=x/{0..3}.tar"], "not both"),
        (["data.root=null", "data.shards=x.tar"], "val_fraction"),
        (["data.root=null", "data.shards=x.tar", "data.val_fraction=0", "data.weighted=true"], "weighted"),
        (["data.root=null", "data.shards=[]", "data.val_fraction=0"], "data.shards"),
        (["data.remainder=pad"], "drop or wrap"),
    ],
)
def test_shard_settings_are_checked(tmp_path, overrides, match):
    with pytest.raises(TrainConfigError, match=match):
        tiny_train_config("ldm", tmp_path, tmp_path / "run", overrides)


def test_too_few_samples_for_one_step_is_one_line(tmp_path, sharded):
    urls, _ = sharded
    data = ImageTextDataModule(None, 8, batch_size=8, shards=urls[4])  # 3 samples
    with pytest.raises(DataConfigError, match="3 samples make no batch of 8 on each of 1 rank") as caught:
        data.stream(0, 0, 1)
    assert "\n" not in str(caught.value)
    assert ImageTextDataModule(None, 8, batch_size=8, shards=urls[4], remainder="wrap").shard_plan(1).steps == 1


def test_caches_on_shards_give_the_same_loss_and_skip_the_encoders(tmp_path, sharded):
    import torch

    from ldm.training.run import build_data, build_module

    urls, _ = sharded
    common = [
        "data.root=null",
        "data.val_fraction=0",
        f"data.shards={urls}",
        "data.size=8",
        "data.batch_size=4",
        "data.remainder=wrap",
        "model.params.first_stage_config.params.ddconfig.resolution=8",
    ]
    cfg = tiny_train_config("ldm", tmp_path, tmp_path / "run", common)
    cached_cfg = tiny_train_config(
        "ldm", tmp_path, tmp_path / "run", common + ["training.text_cache=100", "training.latent_cache=100"]
    )
    torch.manual_seed(0)
    plain = build_module(cfg)
    cached = build_module(cached_cfg)
    cached.load_state_dict(plain.state_dict())
    calls = {"vae": 0, "text": 0}
    vae_encode, text_encode = cached.model.vae.encode, cached.model.encode_text
    cached.model.vae.encode = lambda x: (calls.__setitem__("vae", calls["vae"] + len(x)), vae_encode(x))[1]
    cached.model.encode_text = lambda p: (calls.__setitem__("text", calls["text"] + len(p)), text_encode(p))[1]
    loader = iter(build_data(cfg).train_dataloader())
    steps = 2 * 6  # two epochs of 6 steps (23 samples, wrapped): every sample of the second is a cache hit
    for step in range(steps):
        batch = next(loader)
        a = plain.loss(batch, torch.Generator().manual_seed(step))
        b = cached.loss(batch, torch.Generator().manual_seed(step))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        if step == 5:
            first_epoch = dict(calls)
    assert calls == first_epoch  # nothing encoded in the second epoch
    assert first_epoch["vae"] == len(cached._latent_cache) == 23  # each sample through the VAE once
    assert all(key.startswith(tuple(urls)) for key in cached._latent_cache)  # keyed by shard URL # sample key


def test_a_sharded_run_resumes_only_with_the_same_data_order(tmp_path):
    from ldm.training.resume import ResumeError, check_same_data_order

    cfg = tiny_train_config(
        "ldm",
        tmp_path,
        tmp_path / "run",
        ["data.root=null", "data.val_fraction=0", "data.shards=s/{0..3}.tar", "data.num_workers=2"],
    )
    ckpt = {"ldm": {"config": {"data": dict(cfg["data"])}, "world_size": 2}}
    check_same_data_order(ckpt, cfg, 2, "last.ckpt")  # unchanged: fine
    with pytest.raises(ResumeError, match="on 2 process"):
        check_same_data_order(ckpt, cfg, 4, "last.ckpt")
    ckpt["ldm"]["config"]["data"]["num_workers"] = 4
    with pytest.raises(ResumeError, match="data.num_workers=4, not 2"):
        check_same_data_order(ckpt, cfg, 2, "last.ckpt")
    folder = tiny_train_config("ldm", tmp_path, tmp_path / "run", [])
    check_same_data_order(ckpt, folder, 4, "last.ckpt")  # a folder stream is placed by position alone
