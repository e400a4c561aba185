"""The Inception Score on logits with a known answer, and `ldm eval` reporting it from a local weights file."""

import json
import math

import pytest
import torch
import yaml
from test_evaluate import _eval_main, clip_config, emoji_dir  # noqa: F401 (fixtures)

from ldm.evaluation.metrics import FeatureShapeError, inception_score

CONFIDENT = 30.0  # a logit margin that makes softmax one-hot to ~1e-13


def one_hot_logits(labels: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).double() * CONFIDENT


def test_uniform_or_identical_predictions_score_one():
    assert inception_score(torch.zeros(50, 10))[0] == pytest.approx(1.0, abs=1e-9)
    assert inception_score(one_hot_logits([3] * 40, 10))[0] == pytest.approx(1.0, abs=1e-9)  # confident, no diversity


@pytest.mark.parametrize("k", [2, 5, 10])
def test_one_hot_over_k_equally_used_classes_scores_k(k):
    logits = one_hot_logits([i % k for i in range(20 * k)], classes=10)
    assert inception_score(logits)[0] == pytest.approx(k, rel=1e-9)


def test_a_mixture_matches_the_closed_form_and_splits_are_scored_apart():
    # Half the images one-hot on class 0, half on class 1 but unsure (p = 0.5 on classes 1 and 2):
    # p(y) = (1/2, 1/4, 1/4); KL = log 2 for the first half, 0.5 log 2 + 0.5 log 2 = log 2 for the second.
    sure = one_hot_logits([0] * 10, 3)
    unsure = torch.tensor([[-CONFIDENT, 0.0, 0.0]] * 10, dtype=torch.float64)
    assert inception_score(torch.cat([sure, unsure]))[0] == pytest.approx(math.exp(math.log(2)), rel=1e-9)
    # Two splits, one all class 0 and one all class 1: each split alone has no diversity.
    mean, std = inception_score(one_hot_logits([0] * 10 + [1] * 10, 2), splits=2)
    assert (mean, std) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    with pytest.raises(FeatureShapeError):
        inception_score(torch.zeros(3, 10), splits=4)


def test_eval_reports_the_inception_score_with_local_weights(emoji_dir, clip_config, tmp_path, capsys):  # noqa: F811
    from factories import tiny_config, tiny_model
    from torchvision.models import inception_v3

    from ldm.io.checkpoint import save_state_dict

    torch.manual_seed(0)
    weights = tmp_path / "inception_v3.pth"
    torch.save(inception_v3(weights=None, init_weights=False, aux_logits=False).state_dict(), weights)
    ckpt, cfg = tmp_path / "tiny.safetensors", tmp_path / "tiny.yaml"
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    cfg.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "results.json"
    assert (
        _eval_main(
            [
                "eval",
                "--config",
                str(cfg),
                "--ckpt",
                str(ckpt),
                "--clip",
                "random",
                "--clip-config",
                str(clip_config),
                "--data",
                str(emoji_dir),
                "--scales",
                "1",
                "--n-train-prompts",
                "0",
                "--max-heldout",
                "2",
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--kid-subsets",
                "2",
                "--device",
                "cpu",
                "--inception-weights",
                str(weights),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "| IS |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    # Between 1 and the row's image count (IS <= min(classes, images) per split), on real and generated rows.
    assert {r["scale"] for r in rows} == {None, 1.0}
    assert all(1.0 - 1e-9 <= r["inception_score"] <= r["n"] + 1e-9 for r in rows)
