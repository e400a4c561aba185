"""Training-time caption sampling (keywords, style word) and weighted drawing from captions.jsonl."""

import json
import random
from collections import Counter

import pytest
import torch
from PIL import Image

from ldm.data.folder import CaptionedImageFolder, CaptionFileError, folder_extras
from ldm.training.captions import CaptionSampling, styled
from ldm.training.data import SampleStream, split_validation


def _folder(root, rows):
    (root / "images").mkdir(parents=True)
    for r in rows:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / r["file"])
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_plain_captions_without_sampling():
    sampler = CaptionSampling()
    assert not sampler.active
    assert sampler("red apple", {"keywords": ["fruit"], "style": "twemoji"}, random.Random(0)) == "red apple"


def test_keywords_and_style_word_at_their_rates():
    sampler = CaptionSampling(keyword_prob=0.3, max_keywords=2, style_prob=0.5)
    extra = {"keywords": ["apple", "fruit", "red"], "style": "openmoji"}
    out = [sampler("red apple", extra, random.Random(i)) for i in range(4000)]
    styled_share = sum(c.endswith(", openmoji style") for c in out) / len(out)
    plain = [c.removesuffix(", openmoji style") for c in out]
    keyword_share = sum(c != "red apple" for c in plain) / len(out)
    assert abs(styled_share - 0.5) < 0.04 and abs(keyword_share - 0.3) < 0.04
    for c in plain:
        if c != "red apple":
            words = c.split(", ")
            assert 1 <= len(words) <= 2 and set(words) <= set(extra["keywords"]) and len(set(words)) == len(words)
    assert styled("red apple", "twemoji") == "red apple, twemoji style" and styled("red apple", None) == "red apple"
    # an image with no keywords keeps its caption; no style, no suffix
    assert CaptionSampling(keyword_prob=1.0, style_prob=1.0)("cat", {}, random.Random(0)) == "cat"


def test_folder_reads_extras_and_rejects_bad_weights(tmp_path):
    rows = [
        {"file": "images/a.png", "caption": "a", "keywords": ["x"], "style": "s", "weight": 0.5, "group": "g"},
        {"file": "images/b.png", "caption": "b"},
    ]
    ds = CaptionedImageFolder(_folder(tmp_path / "ok", rows), 8)
    assert ds.extras == [{"keywords": ["x"], "style": "s", "weight": 0.5, "group": "g"}, {}]
    train, val = split_validation(ds, 0.5)
    assert folder_extras(train) + folder_extras(val) in ([ds.extras[0], ds.extras[1]], [ds.extras[1], ds.extras[0]])
    bad = [{"file": "images/a.png", "caption": "a", "weight": -1}]
    with pytest.raises(CaptionFileError, match="weight"):
        CaptionedImageFolder(_folder(tmp_path / "bad", bad), 8)


def test_weighted_stream_draws_in_proportion_and_resumes_identically(tmp_path):
    rows = [
        {"file": f"images/{i}.png", "caption": f"c{i}", "weight": w, "keywords": ["k"], "style": "s"}
        for i, w in enumerate([4.0, 1.0, 1.0, 2.0])
    ]
    ds = CaptionedImageFolder(_folder(tmp_path, rows), 8)
    sampling = CaptionSampling(keyword_prob=0.5, style_prob=0.5)
    stream = SampleStream(ds, batch_size=4, seed=3, weighted=True, captions=sampling)
    base = Counter(stream.item(p)["caption"].removesuffix(", s style").replace("k", "") for p in range(4000))
    # keyword captions ("k") lose the name; count names among the rest, in proportion 4:1:1:2
    named = {k: v for k, v in base.items() if k}
    total = sum(named.values())
    for i, w in enumerate([4.0, 1.0, 1.0, 2.0]):
        assert abs(named[f"c{i}"] / total - w / 8) < 0.04
    # a stream started at batch 5 yields exactly what the first one yielded from there (resume)
    later = SampleStream(ds, batch_size=4, seed=3, weighted=True, captions=sampling, start_batch=5)
    it = iter(later)
    for p in range(20, 28):
        a, b = next(it), stream.item(p)
        assert a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])
    # unweighted: a permutation per epoch, every item once
    plain = SampleStream(ds, batch_size=4, seed=3)
    assert sorted(plain.item(p)["caption"] for p in range(4)) == ["c0", "c1", "c2", "c3"]
