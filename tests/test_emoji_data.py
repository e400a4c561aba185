"""The emoji dataset builder: parsing, rendering, the deterministic held-out split, errors.

Rendering needs the Noto Color Emoji font (Debian fonts-noto-color-emoji) and Unicode's
emoji-test.txt (Debian unicode-data); scripts/setup.sh installs both. Without them the tests that need
them skip and say which package to install. These tests build from the font only (sources_dir=None);
tests/data/test_emoji_sources.py covers the SVG designs.
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageFont

from ldm.data import emoji
from ldm.data.emoji import (
    HELDOUT_COMBINATIONS,
    EmojiFontNotFoundError,
    EmojiListNotFoundError,
    build_emoji_dataset,
    parse_emoji_test,
    person_combination,
    render_emoji,
    split_emoji,
)
from ldm.interfaces.cli.main import main as cli_main

SAMPLE = """\
# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
# group: People & Body
1F9D1 1F3FE 200D 2696 FE0F                             ; fully-qualified     # 🧑🏾‍⚖️ E12.1 judge: medium-dark skin tone
1F9D1 1F3FE 200D 2696                                  ; minimally-qualified # 🧑🏾‍⚖ E12.1 judge: medium-dark skin tone
1F469 1F3FE 200D 2696 FE0F                             ; fully-qualified     # 👩🏾‍⚖️ E4.0 woman judge: medium-dark skin tone
1F469 1F3FD 200D 2696 FE0F                             ; fully-qualified     # 👩🏽‍⚖️ E4.0 woman judge: medium skin tone
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone
"""  # noqa: E501


@pytest.fixture(scope="module")
def full_list(emoji_list):
    return parse_emoji_test(emoji_list.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, emoji_font, emoji_list):
    out = tmp_path_factory.mktemp("emoji")
    summary = build_emoji_dataset(out, size=32, limit=60, sources_dir=None)
    return out, summary


def test_parse_keeps_only_fully_qualified_with_names_and_groups():
    items = parse_emoji_test(SAMPLE)
    assert [e.name for e in items] == [
        "grinning face",
        "smiling face",
        "judge: medium-dark skin tone",
        "woman judge: medium-dark skin tone",
        "woman judge: medium skin tone",
    ]
    assert items[1].text == "\u263a\ufe0f"
    assert items[1].codepoints == "263A FE0F"
    assert items[2].group == "People & Body"


def test_person_combination_strips_gender_and_needs_one_skin_tone():
    assert person_combination("woman judge: medium-dark skin tone") == ("judge", "medium-dark skin tone")
    assert person_combination("person biking: light skin tone") == ("biking", "light skin tone")
    assert person_combination("judge") is None
    assert person_combination("handshake: light skin tone, dark skin tone") is None
    assert person_combination("flag: Chad") is None


def test_split_holds_out_whole_combinations_deterministically(full_list):
    train, heldout, counts = split_emoji(full_list)
    train2, heldout2, _ = split_emoji(list(reversed(full_list)))
    assert {e.codepoints for e in heldout} == {e.codepoints for e in heldout2}  # order-independent
    assert len(train) + len(heldout) == len(full_list)
    combos = set(HELDOUT_COMBINATIONS)
    assert not any(person_combination(e.name) in combos for e in train)
    # every combination is real: all three genders of each are held out
    assert counts["heldout_combination"] == 3 * len(HELDOUT_COMBINATIONS)
    assert {
        "judge: medium-dark skin tone",
        "man judge: medium-dark skin tone",
        "woman judge: medium-dark skin tone",
    } <= {e.name for e in heldout}
    # the same role and tone each still appear in training, in other combinations
    assert "woman judge: medium skin tone" in {e.name for e in train}
    assert 0.03 < counts["heldout_random"] / len(full_list) < 0.07
    # an emoji's split does not depend on what else is in the list
    _, held_sub, _ = split_emoji(full_list[::7])
    assert {e.codepoints for e in held_sub} == {e.codepoints for e in heldout if e in set(full_list[::7])}


def test_render_is_centred_rgb_and_skips_missing_glyphs(emoji_font):
    font = ImageFont.truetype(str(emoji_font), emoji.FONT_SIZE)
    image = render_emoji("\U0001f600", font, size=48)
    assert image.mode == "RGB" and image.size == (48, 48)
    a = np.asarray(image).astype(int)
    assert (a[0, 0] == 255).all()  # white background
    ys, xs = np.nonzero((a < 240).any(axis=2))
    assert abs((ys.min() + ys.max()) / 2 - 23.5) <= 2 and abs((xs.min() + xs.max()) / 2 - 23.5) <= 2
    assert render_emoji("\ue000", font) is None  # private use: no glyph, renders blank
    assert render_emoji("A", font) is None


def test_build_writes_images_captions_and_summary(built):
    out, summary = built
    assert summary["considered"] == 60
    assert summary["rendered"] + summary["skipped_not_rendered"] == 60
    assert summary["train"] + summary["heldout"] == summary["rendered"]
    assert summary["train"] > 40
    for split in ("train", "heldout"):
        rows = [json.loads(line) for line in (out / split / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == summary[split]
        for row in rows:
            assert row["caption"].strip()
            with Image.open(out / split / row["file"]) as im:
                assert im.mode == "RGB" and im.size == (32, 32)
                a = np.asarray(im)
            assert a.std() > 10, f"{row['file']} ({row['caption']}) looks blank"
    assert json.loads((out / "summary.json").read_text())["train"] == summary["train"]
    assert "judge\tmedium-dark skin tone" in (out / "heldout_combinations.txt").read_text()
    # limit spreads over the list: more than the first group is covered
    groups = {
        json.loads(line)["group"]
        for line in (out / "train" / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    }
    assert len(groups) >= 6


def test_rebuild_is_identical(built, tmp_path):
    out, _ = built
    build_emoji_dataset(tmp_path, size=32, limit=60, sources_dir=None)
    for split in ("train", "heldout"):
        assert (tmp_path / split / "captions.jsonl").read_text() == (out / split / "captions.jsonl").read_text()
        first = json.loads((out / split / "captions.jsonl").read_text().splitlines()[0])["file"]
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / split / first)), np.asarray(Image.open(out / split / first))
        )
    # building again into the same folder replaces the previous build
    build_emoji_dataset(tmp_path, size=32, limit=20, sources_dir=None)
    assert (
        len(list((tmp_path / "train" / "images").rglob("*.png")))
        + len(list((tmp_path / "heldout" / "images").rglob("*.png")))
        == 20
    )


def test_missing_font_names_the_debian_package(tmp_path, capsys):
    with pytest.raises(EmojiFontNotFoundError, match="fonts-noto-color-emoji"):
        build_emoji_dataset(tmp_path, font_path=tmp_path / "nope.ttf")
    assert cli_main(["data", "emoji", "--out", str(tmp_path), "--font", str(tmp_path / "nope.ttf")]) == 2
    assert "fonts-noto-color-emoji" in capsys.readouterr().err


def test_missing_emoji_list_names_the_debian_package(tmp_path, emoji_font):  # the font is looked for first
    with pytest.raises(EmojiListNotFoundError, match="unicode-data"):
        build_emoji_dataset(tmp_path, emoji_test_path=tmp_path / "emoji-test.txt")


def test_refuses_to_clobber_foreign_folder(tmp_path, emoji_font, emoji_list):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.txt").write_text("keep me")
    with pytest.raises(emoji.OutputDirNotEmptyError):
        build_emoji_dataset(tmp_path, limit=5, sources_dir=None)
    assert (tmp_path / "train" / "mine.txt").read_text() == "keep me"


def test_main_builds(tmp_path, capsys, emoji_font, emoji_list):
    assert (
        cli_main(
            [
                "data",
                "emoji",
                "--out",
                str(tmp_path),
                "--limit",
                "10",
                "--size",
                "16",
                "--sources",
                str(tmp_path / "none"),
            ]
        )
        == 0
    )
    assert "10 emoji rendered" in capsys.readouterr().out
    assert Image.open(next((tmp_path / "train" / "images").rglob("*.png"))).size == (16, 16)


def test_person_family_strips_tone_and_gender_and_weights_balance_families(full_list):
    assert emoji.person_family("woman judge: dark skin tone") == "judge"
    assert emoji.person_family("man: light skin tone, beard") == "person: beard"
    assert emoji.person_family("handshake: light skin tone, dark skin tone") == "handshake"
    assert emoji.person_family("kiss: woman, man, dark skin tone") == "kiss: woman, man"
    assert emoji.person_family("woman") == "person"
    assert emoji.person_family("red apple") == "red apple"
    weights = emoji.sampling_weights(full_list)
    by_name = {e.name: weights[e.codepoints] for e in full_list}
    assert by_name["red apple"] == 1.0
    judges = [e for e in full_list if emoji.person_family(e.name) == "judge"]
    assert len(judges) == 18  # 3 genders x (no tone + 5 tones)
    assert by_name["woman judge: medium skin tone"] == pytest.approx(18**-0.5, abs=1e-4)
    # the family as a whole weighs sqrt(18) ~ 4 objects, not 18
    assert sum(weights[e.codepoints] for e in judges) == pytest.approx(18**0.5, abs=1e-2)


def test_unknown_style_is_a_clear_error(tmp_path):
    with pytest.raises(emoji.EmojiDataError, match="unknown style"):
        build_emoji_dataset(tmp_path, limit=5, sources_dir=None, styles=["comic sans"])
    with pytest.raises(emoji.EmojiDataError, match="ldm data emoji-sources"):
        build_emoji_dataset(tmp_path, limit=5, sources_dir=tmp_path / "none", styles=["twemoji"])


def test_bad_options_are_project_errors_shown_in_one_line(tmp_path, capsys):
    from ldm.core.errors import LdmError

    with pytest.raises(LdmError, match="at least 8 pixels"):
        build_emoji_dataset(tmp_path, size=4)
    assert cli_main(["data", "emoji", "--out", str(tmp_path), "--size", "4"]) == 2
    assert capsys.readouterr().err.strip() == "ldm data: error: image size must be at least 8 pixels, got 4"
