"""Evaluation metrics (FID, KID, precision/recall), the judges, and `ldm eval` end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.evaluation.metrics import (
    ClipFeatures,
    FeatureShapeError,
    InceptionFeatures,
    InceptionWeightsError,
    NearestNeighbourJudge,
    ZeroShotJudge,
    clip_score,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
    sqrtm_psd,
    topk_accuracy,
)
from ldm.evaluation.report import select_prompts


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# ---- FID -------------------------------------------------------------------------------------


def test_fid_of_identical_sets_is_zero():
    x = gaussian(500, 16, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_a_mean_shift_is_the_squared_shift():
    # Same samples moved by delta: equal covariances, so FID must be exactly ||delta||^2.
    x = gaussian(300, 8, 1)
    delta = np.linspace(-1.0, 2.0, 8)
    assert frechet_distance(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-9)
    # and it grows with the shift
    assert frechet_distance(x, x + 2 * delta) == pytest.approx(4 * float(delta @ delta), rel=1e-9)


def test_fid_matches_closed_form_for_diagonal_covariances():
    # Diagonal Gaussians: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (s1 - s2)^2 for standard deviations s1, s2.
    x = gaussian(400, 6, 2)
    x = (x - x.mean(0)) / x.std(0, ddof=1)  # exactly unit variance per column...
    y = x * 3.0  # ...so y has std 3 and the same correlation structure
    fid = frechet_distance(x, y)
    assert fid == pytest.approx(6 * (3.0 - 1.0) ** 2, rel=1e-6)


def test_sqrtm_psd_squares_back_and_ignores_rounding_negatives():
    a = gaussian(50, 5, 3)
    cov = a.T @ a
    root = sqrtm_psd(cov)
    np.testing.assert_allclose(root @ root, cov, rtol=1e-10, atol=1e-10)
    singular = np.outer(np.ones(4), np.ones(4)) - 1e-15 * np.eye(4)  # rank 1, tiny negative eigenvalues
    assert np.isfinite(sqrtm_psd(singular)).all()


def test_fid_is_finite_with_more_dims_than_samples():
    # Rank-deficient covariances (as with 2048-d Inception features and few images) must not give NaN.
    fid = frechet_distance(gaussian(20, 64, 4), gaussian(20, 64, 5))
    assert np.isfinite(fid) and fid > 0


def test_fid_rejects_mismatched_widths():
    with pytest.raises(FeatureShapeError):
        frechet_distance(gaussian(10, 4, 0), gaussian(10, 5, 0))


# ---- KID -------------------------------------------------------------------------------------


def test_kid_is_about_zero_for_the_same_distribution_and_positive_when_shifted():
    x, y = gaussian(400, 16, 6), gaussian(400, 16, 7)
    same, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(x, gaussian(400, 16, 8, shift=0.5), subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.05 and shifted > 20 * abs(same)


def test_kid_is_unbiased_near_zero_on_average():
    # The unbiased estimator averages to ~0 (not > 0, like the biased one) over many small subsets.
    x, y = gaussian(2000, 4, 9), gaussian(2000, 4, 10)
    mean, std = kernel_inception_distance(x, y, subsets=200, subset_size=20)
    assert abs(mean) < 3 * std / np.sqrt(200)


# ---- precision / recall -----------------------------------------------------------------------


def test_precision_recall_identical_sets_are_one():
    x = gaussian(100, 8, 11)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)


def test_precision_recall_drop_for_disjoint_sets():
    real = gaussian(100, 8, 12)
    assert precision_recall(real, gaussian(100, 8, 13, shift=50.0), k=3) == (0.0, 0.0)


def test_precision_stays_high_when_fake_covers_only_part_of_real():
    # Mode collapse: fake = a tight cluster inside real -> high precision, low recall.
    real = gaussian(200, 2, 14)
    fake = 0.05 * gaussian(200, 2, 15)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9 and recall < 0.2


# ---- judges ------------------------------------------------------------------------------------


def test_nearest_neighbour_judge_and_topk():
    gallery = torch.eye(6)
    labels = ["a", "b", "c", "d", "e", "f"]
    judge = NearestNeighbourJudge(gallery, labels)
    queries = torch.tensor([[0.0, 0, 1, 0, 0, 0], [1.0, 0.5, 0, 0, 0, 0]])  # nearest: c; then a, with b second
    acc = topk_accuracy(judge.class_scores(queries), judge.classes, ["c", "b"], ks=(1, 2))
    assert acc[1] == 0.5  # c right, b only second
    assert acc[2] == 1.0


def test_zero_shot_judge_and_clip_score():
    text = torch.eye(3)
    judge = ZeroShotJudge(text, ["x", "y", "z"])
    assert topk_accuracy(judge.class_scores(torch.eye(3)), judge.classes, ["x", "y", "z"], ks=(1,))[1] == 1.0
    assert clip_score(torch.eye(3), torch.eye(3)) == pytest.approx(100.0)
    assert clip_score(torch.eye(3), torch.eye(3)[[1, 2, 0]]) == pytest.approx(0.0)


def test_select_prompts_marks_held_out_combinations():
    held = ["woman judge: medium-dark skin tone", "cat face"]
    train = [f"t{i}" for i in range(10)]
    items = select_prompts(held, train, {("judge", "medium-dark skin tone")}, n_train=3, seed=0)
    assert [it.combination for it in items] == [True, False, False, False, False]
    assert [it.split for it in items].count("train") == 3
    assert items == select_prompts(held, train, {("judge", "medium-dark skin tone")}, n_train=3, seed=0)


# ---- fixtures: tiny data, tiny CLIP, tiny model --------------------------------------------------

CAPTIONS = {
    "train": ["red circle", "blue square", "green triangle", "yellow star", "man judge: dark skin tone", "black cross"],
    "heldout": ["woman judge: medium-dark skin tone", "purple ring", "orange bar", "white dot"],
}


def _draw(i: int) -> Image.Image:
    # Distinct, deterministic pictures: a coloured rectangle at an index-dependent place.
    rng = np.random.default_rng(i)
    a = np.full((64, 64, 3), 255, np.uint8)
    x, y = 4 + 5 * i, 60 - 5 * i
    a[min(x, y) - 4 : max(x, y), 8 : 40 + 2 * i] = rng.integers(0, 255, 3)
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def emoji_dir(tmp_path_factory) -> Path:
    # Two designs of every caption, as the emoji build writes them: the second is the first, darker.
    root = tmp_path_factory.mktemp("emoji")
    n = 0
    for split, caps in CAPTIONS.items():
        (root / split / "images").mkdir(parents=True)
        with open(root / split / "captions.jsonl", "w") as f:
            for j, cap in enumerate(caps):
                group = "People & Body" if "judge" in cap else "Symbols"
                for style, dim in (("alpha", 1.0), ("beta", 0.8)):
                    a = (np.asarray(_draw(n)).astype(float) * dim).astype(np.uint8)
                    Image.fromarray(a).save(root / split / "images" / f"{j:05d}{style}.png")
                    f.write(
                        json.dumps(
                            {"file": f"images/{j:05d}{style}.png", "caption": cap, "style": style, "group": group}
                        )
                        + "\n"
                    )
                n += 1
    (root / "heldout_combinations.txt").write_text("# person type\tskin tone\njudge\tmedium-dark skin tone\n")
    return root


@pytest.fixture(scope="module")
def clip_config(tmp_path_factory) -> Path:
    from factories import TINY_TEXT

    path = tmp_path_factory.mktemp("clip") / "tiny-eval-clip.json"
    path.write_text(json.dumps(TINY_TEXT))
    return path


@pytest.fixture(scope="module")
def tiny_clip(clip_config):
    from ldm.models.clip import create_clip

    torch.manual_seed(0)
    return create_clip(clip_config).eval()


def test_nearest_neighbour_judge_is_perfect_on_real_images(emoji_dir, tiny_clip):
    from ldm.evaluation.report import load_images

    feats = ClipFeatures(tiny_clip)
    images, caps = [], []
    for split in ("train", "heldout"):
        im, c = load_images(emoji_dir / split, 16)
        images.append(im)
        caps += c
    f = feats(torch.cat(images))
    judge = NearestNeighbourJudge(f, caps)
    acc = topk_accuracy(judge.class_scores(f), judge.classes, caps)
    assert acc[1] == 1.0 and acc[5] == 1.0
    # a wrong label for every image would score 0 at top-1
    shifted = caps[2:] + caps[:2]  # two designs per caption sit next to each other
    assert topk_accuracy(judge.class_scores(f), judge.classes, shifted)[1] == 0.0


def test_leave_one_out_ceiling_needs_another_design_of_the_same_emoji():
    # Two designs per name, each a small step from the other: without its own row, an image finds its twin.
    base = torch.eye(6)[:3] * 5
    gallery = torch.cat([base, base + 0.1 * torch.randn(3, 6, generator=torch.Generator().manual_seed(0))])
    labels = ["a", "b", "c", "a", "b", "c"]
    judge = NearestNeighbourJudge(gallery, labels)
    own = torch.arange(6)
    assert topk_accuracy(judge.class_scores(gallery, exclude=own), judge.classes, labels)[1] == 1.0
    # with one design per name the same rule has nothing left to find: every answer is another name
    single = NearestNeighbourJudge(base, ["a", "b", "c"])
    assert topk_accuracy(single.class_scores(base, exclude=torch.arange(3)), single.classes, ["a", "b", "c"])[1] == 0.0
    # -1 means "exclude nothing"
    assert (
        topk_accuracy(single.class_scores(base, exclude=torch.full((3,), -1)), single.classes, ["a", "b", "c"])[1]
        == 1.0
    )


def test_prompt_list_reading_and_spread(tmp_path):
    from ldm.evaluation.prompts import pairwise_spread, read_prompt_list

    path = tmp_path / "list.txt"
    path.write_text("# comment\n## hearts\nred heart\n\n## fruit\nred apple\nbanana\n")
    assert read_prompt_list(path) == [("hearts", "red heart"), ("fruit", "red apple"), ("fruit", "banana")]
    same = torch.ones(4, 3)
    assert pairwise_spread(same) == pytest.approx(0.0, abs=1e-6)
    assert pairwise_spread(torch.eye(3)) == pytest.approx(1.0)  # orthogonal pictures: distance 1
    path.write_text("# nothing\n")
    from ldm.evaluation.metrics import EvaluationError

    with pytest.raises(EvaluationError, match="no prompts"):
        read_prompt_list(path)


def test_inception_weights_missing_or_wrong(tmp_path):
    with pytest.raises(InceptionWeightsError, match="not found"):
        InceptionFeatures(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InceptionWeightsError, match="cannot read"):
        InceptionFeatures(garbage)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(InceptionWeightsError, match="does not fit"):
        InceptionFeatures(bad)


def _eval_main(argv: list[str]) -> int:
    # The `ldm eval` parser on its own, so this test does not depend on every other subcommand importing.
    import argparse

    from ldm.interfaces.cli import evaluate as command

    parser = argparse.ArgumentParser(prog="ldm")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_is_an_ldm_command():
    from ldm.interfaces.cli.main import COMMAND_MODULES

    assert "ldm.interfaces.cli.evaluate" in COMMAND_MODULES


def test_eval_cli_end_to_end(emoji_dir, clip_config, tmp_path, capsys):
    from factories import tiny_config, tiny_model

    from ldm.io.checkpoint import save_state_dict

    model = tiny_model()
    ckpt, cfg = tmp_path / "tiny.safetensors", tmp_path / "tiny.yaml"
    save_state_dict(model.original_state_dict(), ckpt)
    cfg.write_text(yaml.safe_dump(tiny_config()))
    out, table = tmp_path / "results.json", tmp_path / "table.md"
    prompt_list = tmp_path / "prompts.txt"
    prompt_list.write_text("## shapes\nred circle\npurple ring\n## people\nman judge: dark skin tone\n")
    rc = _eval_main(
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
            "3",
            "--n-train-prompts",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--kid-subsets",
            "5",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--table",
            str(table),
            "--prompt-list",
            str(prompt_list),
            "--prompt-seeds",
            "3",
            "--styles",
            "alpha,beta",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| guidance |" in printed and "Chance level over 10 emoji names: top-1 10.000%" in printed
    assert "Inception-v3 metrics: not computed" in printed
    results = json.loads(out.read_text())
    rows = results["rows"]
    # 6 groups x (real reference + 2 scales)
    assert len(rows) == 18
    assert {r["scale"] for r in rows} == {None, 1.0, 3.0}
    combo = [r for r in rows if r["group"] == "held-out combinations"]
    assert all(r["n"] == 1 for r in combo)
    objects = [r for r in rows if r["group"] == "held-out objects" and r["scale"] == 1.0][0]
    assert objects["n"] == 3  # of the 4 held-out captions, the judge is a person, not an object
    full = [r for r in rows if r["group"] == "all" and r["scale"] == 3.0][0]
    assert full["n"] == 8 and full["fid_clip"] >= 0 and 0 <= full["precision"] <= 1 and 0 <= full["recall"] <= 1
    assert 0 <= full["family_top1"] <= 1 and full["family_top1"] >= full["nn_top1"]
    low = [r for r in rows if r["group"] == "all" and r["scale"] == 1.0][0]
    assert low["clip_score"] != full["clip_score"]  # guidance changed the images
    assert table.read_text().startswith("| guidance |")
    listed = results["prompt_list"]
    assert [r["prompt"] for r in listed["rows"]] == ["red circle", "purple ring", "man judge: dark skin tone"]
    assert set(listed["categories"]) == {"shapes", "people"} and listed["seeds"] == 3
    assert [r["heldout"] for r in listed["rows"]] == [False, True, False]
    assert all(r["diversity"] > 0 and r["real_diversity"] > 0 for r in listed["rows"])
    assert set(results["styles"]["styles"]) == {"alpha", "beta"}
    assert "| style | prompts | style top-1 | top-1 |" in printed and "| people | 1 |" in printed


def test_eval_cli_reports_missing_clip(tmp_path):
    with pytest.raises(FileNotFoundError, match="judge CLIP weights not found"):
        _eval_main(["eval", "--clip", str(tmp_path / "missing.safetensors"), "--data", str(tmp_path)])


def test_inception_features_from_a_local_torchvision_state_dict(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path / "inception_v3.pth"
    torch.save(inception_v3(weights=None, init_weights=False, aux_logits=True).state_dict(), path)
    features = InceptionFeatures(path)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    f = features(images)
    assert f.shape == (1, 2048) and torch.isfinite(f).all()
    torch.testing.assert_close(features(images), f)  # eval mode: no dropout, deterministic


def _fake_results(top1_by_scale: dict, size: int) -> dict:
    rows = [
        {"scale": None, "group": g, "n": 4, "nn_top1": 0.99, "nn_top5": 1.0, "family_top1": 1.0, "clip_score": 80.0}
        for g in ("all", "train objects")
    ]
    rows += [
        {
            "scale": s,
            "group": g,
            "n": 4,
            "nn_top1": t,
            "nn_top5": min(1.0, 2 * t),
            "family_top1": t,
            "fid_clip": 0.01,
            "precision": 0.9,
            "recall": 0.8,
            "clip_score": 81.0,
        }
        for s, t in top1_by_scale.items()
        for g in ("all", "train objects")
    ]
    return {
        "rows": rows,
        "classes": 10,
        "chance_top1": 0.1,
        "chance_top5": 0.5,
        "settings": {"sampler": "ddim", "steps": 25, "image_size": size, "seed": 0},
    }


def test_comparison_table_puts_models_side_by_side_and_finds_the_best_scale(tmp_path, capsys):
    from ldm.evaluation.report import best_scale_summary, format_comparison

    old, new = _fake_results({1.0: 0.2, 3.0: 0.25}, 32), _fake_results({1.0: 0.3, 3.0: 0.6, 7.0: 0.55}, 64)
    table = format_comparison({"v1": old, "v2": new})
    rows = [line for line in table.splitlines() if line.startswith("| all |")]
    # the ceiling once, then v1 at two scales and v2 at three
    assert [r.split(" | ")[1:3] for r in rows] == [
        ["real images", "—"],
        ["v1", "1"],
        ["v1", "3"],
        ["v2", "1"],
        ["v2", "3"],
        ["v2", "7"],
    ]
    assert "| all | v2 | 3 | 4 | 60.0% |" in table and "v1: sampler ddim, 25 steps, 32 px" in table
    assert best_scale_summary(new, "train objects") == (0.6, 3.0)
    with pytest.raises(Exception, match="no generated rows"):
        best_scale_summary(new, "held-out combinations")
    # the same through the command line, from saved --out files
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert (
        _eval_main(
            [
                "eval",
                "--compare",
                f"v1={tmp_path / 'a.json'}",
                f"v2={tmp_path / 'b.json'}",
                "--table",
                str(tmp_path / "t.md"),
            ]
        )
        == 0
    )
    assert (tmp_path / "t.md").read_text().strip() == capsys.readouterr().out.strip() == table


def test_comparison_refuses_a_file_that_is_not_eval_results(tmp_path):
    from ldm.core.errors import LdmError

    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(LdmError, match="not the --out file of ldm eval"):
        _eval_main(["eval", "--compare", f"x={tmp_path / 'x.json'}"])
    with pytest.raises(LdmError, match="NAME=RESULTS.json"):
        _eval_main(["eval", "--compare", str(tmp_path / "x.json")])
