"""The SVG emoji designs: pinned fetch with integrity checks, file naming per design, rendering, the
multi-style build (one held-out split for every style), keywords.

The designs come from `ldm data emoji-sources` (npm pack; scripts/setup.sh runs it when npm is there).
Without them, or without the Noto font / Unicode's emoji list, the tests that need them skip and say
what to install; the fetch and naming tests need nothing.
"""

import json
import random
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ldm.data import emoji, emoji_sources
from ldm.data.emoji_sources import SOURCES, EmojiSourceError, fetch_sources, find_svg, integrity_of, render_svg
from ldm.interfaces.cli.main import main as cli_main
from ldm.training.captions import CaptionSampling

SOURCES_DIR = Path(__file__).resolve().parents[1] / emoji_sources.DEFAULT_SOURCES_DIR
HANDFUL = ["red apple", "grinning face", "red heart", "dog face", "woman judge: medium skin tone", "rocket"]


@pytest.fixture(scope="module")
def sources_dir():
    found = emoji_sources.available_sources(SOURCES_DIR) if SOURCES_DIR.is_dir() else []
    if len(found) < len(SOURCES):
        pytest.skip(
            f"emoji designs not fetched into {SOURCES_DIR}: run `ldm data emoji-sources` (scripts/setup.sh does)"
        )
    return SOURCES_DIR


@pytest.fixture(scope="module")
def emoji_by_name(emoji_list):
    return {e.name: e for e in emoji.parse_emoji_test(emoji_list.read_text(encoding="utf-8"))}


def test_file_names_follow_each_designs_convention():
    assert emoji_sources.twemoji_file("1F600", "grinning face") == ["1f600.svg"]
    assert emoji_sources.twemoji_file("2764 FE0F", "red heart") == ["2764.svg"]  # FE0F dropped outside ZWJ
    assert "1f469-1f3fd-200d-2696-fe0f.svg" in emoji_sources.twemoji_file("1F469 1F3FD 200D 2696 FE0F", "x")
    assert emoji_sources.openmoji_file("2764 FE0F", "red heart")[0] == "2764-FE0F.svg"
    assert emoji_sources.fluent_file("1F469 1F3FD 200D 2696 FE0F", "woman judge: medium skin tone") == [
        "woman-judge-medium.svg"
    ]
    assert emoji_sources.fluent_file("1F34E", "red apple") == ["red-apple.svg", "red-apple-default.svg"]
    assert emoji_sources.fluent_file("1F1EF 1F1F5", "flag: Japan")[0] == "flag-japan.svg"


def test_every_pin_is_a_sha512_integrity_string():
    for source in (*SOURCES, emoji_sources.KEYWORDS):
        assert source.integrity.startswith("sha512-") and len(source.integrity) == 95, source.spec
        assert source.version.count(".") == 2 and source.licence and source.attribution


def _fake_npm(tmp_path: Path, payload: bytes) -> str:
    """An `npm` that 'packs' any spec into a tarball with the given bytes, as the real one writes it."""
    script = tmp_path / "npm"
    blob = tmp_path / "blob.tgz"
    blob.write_bytes(payload)
    script.write_text(f'#!/bin/sh\n# npm pack SPEC --silent --pack-destination DIR\ncp "{blob}" "$5/pkg.tgz"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_fetch_refuses_a_tarball_whose_checksum_differs(tmp_path):
    npm = _fake_npm(tmp_path, b"not the pinned package")
    with pytest.raises(EmojiSourceError, match="does not match the pinned"):
        fetch_sources(tmp_path / "dest", npm=npm)
    assert not list((tmp_path / "dest").glob("*.tgz"))  # nothing unverified is kept


def test_fetch_without_npm_names_what_to_install(tmp_path):
    with pytest.raises(EmojiSourceError, match="npm not found"):
        fetch_sources(tmp_path / "dest", npm=str(tmp_path / "no-such-npm"))


def test_fetch_keeps_verified_packages_and_unpacks_safely(tmp_path, monkeypatch):
    # A pinned "package" whose tarball tries to write outside its folder: the data filter refuses it.
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        data = b"x"
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    source = emoji_sources.EmojiSource(
        style="t",
        package="evil",
        version="1.0.0",
        integrity=integrity_of(evil),
        svg_dir="package",
        file_names=lambda cp, n: [],
        licence="MIT",
        attribution="a",
        homepage="h",
    )
    monkeypatch.setattr(emoji_sources, "SOURCES", (source,))
    monkeypatch.setattr(emoji_sources, "KEYWORDS", source)
    npm = _fake_npm(tmp_path, evil.read_bytes())
    with pytest.raises(tarfile.OutsideDestinationError):
        fetch_sources(tmp_path / "dest", npm=npm)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dest" / "escaped.txt").exists()


def test_every_design_renders_a_handful(sources_dir, emoji_by_name):
    for source in SOURCES:
        for name in HANDFUL:
            e = emoji_by_name[name]
            svg = find_svg(source, sources_dir, e.codepoints, e.name)
            assert svg is not None, f"{source.style} has no {name}"
            image = render_svg(svg, 48, source.margin)
            a = np.asarray(image).astype(int)
            assert image.mode == "RGB" and image.size == (48, 48)
            assert (a[0, 0] == 255).all(), f"{source.style} {name}: background is not white"
            assert a.std() > 20, f"{source.style} {name} looks blank"
    # the designs differ: the same emoji is not the same picture in two styles
    apple = emoji_by_name["red apple"]
    renders = [
        np.asarray(render_svg(find_svg(s, sources_dir, apple.codepoints, apple.name), 48, s.margin)).astype(float)
        for s in SOURCES
    ]
    assert min(np.abs(a - b).mean() for i, a in enumerate(renders) for b in renders[i + 1 :]) > 5


def test_multi_style_build_splits_by_emoji_and_carries_keywords(sources_dir, tmp_path, emoji_font, emoji_list):
    summary = emoji.build_emoji_dataset(tmp_path, size=32, limit=80, sources_dir=sources_dir)
    assert set(summary["images_per_style"]) == {"noto", *(s.style for s in SOURCES)}
    for style, info in summary["styles"].items():
        assert info["licence"], style
    rows = {
        split: [
            json.loads(line) for line in (tmp_path / split / "captions.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        for split in ("train", "heldout")
    }
    assert len(rows["train"]) == summary["train_images"] and len(rows["heldout"]) == summary["heldout_images"]
    # held out in every style: no emoji has images on both sides
    assert not {r["codepoints"] for r in rows["train"]} & {r["codepoints"] for r in rows["heldout"]}
    styles_per_emoji = {}
    for r in rows["train"]:
        styles_per_emoji.setdefault(r["codepoints"], set()).add(r["style"])
        assert r["weight"] > 0 and isinstance(r["keywords"], list)
        assert (tmp_path / "train" / r["file"]).is_file()
    assert np.mean([len(v) for v in styles_per_emoji.values()]) > 3  # most emoji come in several designs
    with_kw = [r for r in rows["train"] if r["keywords"]]
    assert len(with_kw) > 0.9 * len(rows["train"])


def test_keywords_come_from_cldr_annotations(sources_dir):
    table = emoji_sources.load_keywords(sources_dir)
    assert "fruit" in table[emoji_sources.keyword_key("1F34E")]  # red apple
    # a skin-tone variant takes its base emoji's keywords
    assert table[emoji_sources.keyword_key("1F44B 1F3FB")] == table[emoji_sources.keyword_key("1F44B")]


HIGH_CONTRAST = emoji_sources.HELD_OUT_SOURCES[0]


def test_the_held_out_design_stays_out_of_the_default_build(sources_dir):
    assert HIGH_CONTRAST.style == "fluent high contrast"
    assert HIGH_CONTRAST.style not in {s.style for s in emoji_sources.available_sources(sources_dir)}
    assert HIGH_CONTRAST in emoji_sources.available_sources(sources_dir, held_out=True)


def test_the_held_out_design_renders_in_one_grey(sources_dir, emoji_by_name):
    for name in ("red apple", "grinning face", "rocket", "dog face"):
        e = emoji_by_name[name]
        svg = find_svg(HIGH_CONTRAST, sources_dir, e.codepoints, e.name)
        assert svg is not None and svg.parent.name == "high-contrast", name
        a = np.asarray(render_svg(svg, 48, HIGH_CONTRAST.margin)).astype(int)
        assert a.std() > 20, f"{name} looks blank"
        assert (a.max(-1) - a.min(-1)).max() == 0, f"{name} is not monochrome"
    # monochrome: no skin-tone variants, so a toned person has no picture in this design
    judge = emoji_by_name["woman judge: medium skin tone"]
    assert find_svg(HIGH_CONTRAST, sources_dir, judge.codepoints, judge.name) is None


def test_a_one_style_build_of_the_held_out_design(sources_dir, tmp_path, emoji_list):
    out = tmp_path / "hc"
    assert (
        cli_main(
            [
                "data",
                "emoji",
                "--styles",
                "fluent high contrast",
                "--limit",
                "60",
                "--size",
                "32",
                "--sources",
                str(sources_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    n = summary["images_per_style"]["fluent high contrast"]
    assert list(summary["images_per_style"]) == ["fluent high contrast"] and 10 < n <= 60
    assert summary["considered"] == 60 and summary["styles"]["fluent high contrast"]["licence"] == "MIT"
    rows = [
        json.loads(line)
        for split in ("train", "heldout")
        for line in (out / split / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == n and {r["style"] for r in rows} == {"fluent high contrast"}
    assert all(r["file"].startswith("images/fluent-high-contrast/") for r in rows)
    # the style word that training appends is the trigger phrase of a LoRA trained on this folder
    caption = CaptionSampling(style_prob=1.0)(rows[0]["caption"], rows[0], random.Random(0))
    assert caption == f"{rows[0]['caption']}, fluent high contrast style"
    # the same emoji are held out as in the default build (the split is by code points)
    held = {r["codepoints"] for r in rows if (out / "heldout" / r["file"]).is_file()}
    assert held == {
        e.codepoints for e in emoji.split_emoji([emoji.Emoji(r["codepoints"], "", r["caption"], "") for r in rows])[1]
    }


def test_an_unknown_style_names_the_held_out_one_too(tmp_path):
    with pytest.raises(emoji.EmojiDataError, match="known: .*fluent high contrast"):
        emoji.build_emoji_dataset(tmp_path, styles=["fluent high contrast style"], sources_dir=None)
