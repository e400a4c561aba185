"""The photo dataset (ldm.data.photos, ldm.data.photo_sources), offline: a fake unpacked package with a DEP-5
copyright file and synthetic photos stands for the pinned Debian packages, and fake apt-get / dpkg-deb
scripts for Debian's tools. Nothing is downloaded.
"""

import argparse
import hashlib
import json
import random
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.core.errors import LdmError, one_line
from ldm.data import photos as photos_mod
from ldm.data.folder import CaptionedImageFolder, OutputDirNotEmptyError
from ldm.data.photo_sources import (
    PACKAGES,
    STAMP,
    Package,
    Photo,
    PhotoSourceError,
    check_photo,
    fetch_package,
    licence_verdict,
    parse_dep5,
    stanza_for,
    survey,
)
from ldm.data.photos import build_photo_dataset, random_crops, split_photos
from ldm.interfaces.cli import data as data_command

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake-wallpapers

Files: *
Copyright: 2010 Someone
License: GPL-2+

Files: photos/cc-by-*.jpg
Copyright: 2020, Alice Example
License: CC-BY-4.0

Files: photos/sa-?.jpg
 photos/sa-extra.jpg
Copyright: 2021 Bob Example
License: CC-BY-SA-3.0

Files: photos/zero.jpg photos/flat.jpg
Copyright: Carol Example
License: CC0-1.0

Files: photos/nc.jpg
Copyright: Dan Example
License: CC-BY-NC-4.0

License: GPL-2+
 This program is free software ...
 .
 (a long licence text)
"""
KEPT = {  # file -> (licence, author)
    **{f"cc-by-{i}.jpg": ("CC-BY-4.0", "Alice Example") for i in range(5)},
    **{f"sa-{i}.jpg": ("CC-BY-SA-3.0", "Bob Example") for i in range(4)},
    "zero.jpg": ("CC0-1.0", "Carol Example"),
    "flat.jpg": ("CC0-1.0", "Carol Example"),
}
EXCLUDED = {"gpl.jpg": "GPL-2+ (blanket stanza)", "nc.jpg": "non-commercial"}


def _texture(seed: int, size=(240, 180)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 6, size[0] // 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _fake_package(root: Path, name: str = "fake-wallpapers") -> Package:
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "copyright").write_text(COPYRIGHT)
    folder = root / "usr/share/backgrounds"
    folder.mkdir(parents=True)
    for n, file in enumerate([*KEPT, *EXCLUDED]):
        image = Image.new("RGB", (240, 180), (90, 120, 150)) if file == "flat.jpg" else _texture(n)
        image.save(folder / file, quality=95)
    photos = tuple(
        Photo(path=f"usr/share/backgrounds/{f}", licence=lic, author=who, source_path=f"photos/{f}")
        for f, (lic, who) in KEPT.items()
    )
    return Package(
        name=name,
        version="1.0-1",
        sha256="0" * 64,
        photos=photos,
        scan_dirs=("usr/share/backgrounds",),
        excluded=tuple((f"*/{f}", why) for f, why in EXCLUDED.items()),
    )


@pytest.fixture()
def fake(tmp_path):
    root = tmp_path / "unpacked"
    return root, _fake_package(root)


def test_dep5_stanzas_and_licence_policy():
    stanzas = parse_dep5(COPYRIGHT)
    assert [s.licence for s in stanzas] == ["GPL-2+", "CC-BY-4.0", "CC-BY-SA-3.0", "CC0-1.0", "CC-BY-NC-4.0"]
    assert stanza_for(stanzas, "photos/cc-by-3.jpg").licence == "CC-BY-4.0"  # the last matching stanza wins
    assert stanza_for(stanzas, "photos/sa-extra.jpg").copyright == "2021 Bob Example"  # continuation line
    assert stanza_for(stanzas, "photos/sa-10.jpg").licence == "GPL-2+"  # "?" is one character
    assert stanza_for(stanzas, "photos/gpl.jpg").licence == "GPL-2+"
    for kept in (
        "CC0-1.0",
        "public-domain",
        "CC-BY-2.0",
        "CC-BY-4.0",
        "CC-BY-SA-3.0",
        "CC-BY-SA-4.0",
        "BSD-3-Clause",
        "GPL-2+ or CC-BY-SA-4.0",
    ):
        assert licence_verdict(kept)[0], kept
    assert "ShareAlike" in licence_verdict("CC-BY-SA-4.0")[1]
    for excluded in (
        "GPL-2+",
        "LGPL-3",
        "LGPLv3",
        "AGPL-3.0",
        "CC-BY-NC-4.0",
        "CC-BY-ND-4.0",
        "CC-BY-NC-SA-4.0",
        "proprietary",
        "",
    ):
        assert not licence_verdict(excluded)[0], excluded
    with pytest.raises(PhotoSourceError, match="DEP-5"):
        parse_dep5("This package was debianized by ...\nLicense: GPL\n")


def test_survey_keeps_pins_and_reports_every_other_image(fake):
    root, package = fake
    kept, excluded = survey(root, package)
    assert sorted(Path(k["path"]).name for k in kept) == sorted(KEPT)
    assert {k["licence"] for k in kept} == {"CC-BY-4.0", "CC-BY-SA-3.0", "CC0-1.0"}
    assert next(k for k in kept if k["path"].endswith("sa-1.jpg"))["author"] == "Bob Example"
    assert {Path(e["path"]).name: e["reason"] for e in excluded} == EXCLUDED


def test_a_pin_that_disagrees_with_the_copyright_file_is_refused(fake):
    root, package = fake
    stanzas = parse_dep5(COPYRIGHT)
    for wrong in (
        Photo("usr/share/backgrounds/gpl.jpg", "CC-BY-4.0", "Someone", source_path="photos/gpl.jpg"),
        Photo("usr/share/backgrounds/zero.jpg", "CC0-1.0", "Mallory", source_path="photos/zero.jpg"),
        Photo("usr/share/backgrounds/missing.jpg", "CC0-1.0", "Carol Example", source_path="photos/zero.jpg"),
    ):
        with pytest.raises(PhotoSourceError):
            check_photo(root, package, wrong, stanzas)
    # a licence outside the policy is refused even when the copyright file agrees with the pin
    with pytest.raises(PhotoSourceError, match="not kept"):
        check_photo(
            root,
            package,
            Photo("usr/share/backgrounds/nc.jpg", "CC-BY-NC-4.0", "Dan Example", source_path="photos/nc.jpg"),
            stanzas,
        )
    # a notice beside the images stands in for a blanket stanza, but only while it states the licence
    notice = root / "usr/share/backgrounds/License"
    notice.write_text("Licensed under https://creativecommons.org/licenses/by-sa/3.0/\nCredits: gpl by Erin\n")
    photo = Photo(
        "usr/share/backgrounds/gpl.jpg",
        "CC-BY-SA-3.0",
        "Erin",
        source_path="photos/gpl.jpg",
        notice="usr/share/backgrounds/License",
        notice_text="Licensed under https://creativecommons.org/licenses/by-sa/3.0/",
    )
    assert check_photo(root, package, photo, stanzas)["licence"] == "CC-BY-SA-3.0"
    notice.write_text("Licensed under GPL\n")
    with pytest.raises(PhotoSourceError, match="no longer states"):
        check_photo(root, package, photo, stanzas)


def test_the_real_pins_are_well_formed():
    assert len({p.folder_name for p in PACKAGES}) == len(PACKAGES)
    for package in PACKAGES:
        assert len(package.sha256) == 64 and int(package.sha256, 16) >= 0, package.name
        for photo in package.photos:
            assert licence_verdict(photo.licence)[0], (package.name, photo.path)
            assert photo.author and (photo.source_path or photo.notice)
    ids = [photos_mod.photo_id(p.name, ph.path) for p in PACKAGES for ph in p.photos]
    assert len(set(ids)) == len(ids)


def test_heldout_split_is_by_whole_photo_deterministic_and_spread_over_packages():
    ids = [f"p{i}" for i in range(40)]
    groups = {i: ("a" if int(i[1:]) < 30 else "b") for i in ids}
    train, held = split_photos(ids, groups=groups)
    assert len(held) == 8 and not set(train) & set(held) and sorted(train + held) == sorted(ids)
    assert split_photos(list(reversed(ids)), groups=groups) == (train, held)
    assert sum(groups[i] == "b" for i in held) == 2  # 10 of 40 photos -> 2 of 8
    assert len(split_photos(ids[:100], fraction=0.5)[1]) == 20
    assert split_photos(["x", "y", "z"])[0]  # always one photo left to train on
    with pytest.raises(photos_mod.PhotoDataError):
        split_photos(["only"])


def test_crops_sizes_determinism_and_flat_skip():
    image = _texture(1, (300, 200))
    a, skipped = random_crops(image, 32, 6, random.Random("s"))
    b, _ = random_crops(image, 32, 6, random.Random("s"))
    c, _ = random_crops(image, 32, 6, random.Random("t"))
    assert len(a) == 6 and skipped == 0 and all(x.size == (32, 32) for x in a)
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b] != [x.tobytes() for x in c]
    flat, skipped = random_crops(Image.new("RGB", (300, 200), (10, 20, 30)), 32, 3, random.Random(0))
    assert flat == [] and skipped == 3 * photos_mod.TRIES_PER_CROP
    assert random_crops(image, 256, 3, random.Random(0)) == ([], 0)  # smaller than a crop


def _build(out: Path, root: Path, package: Package, **kw):
    return build_photo_dataset(
        out,
        sources_dir=out.parent / "unused",
        size=32,
        eval_size=48,
        per_image=kw.pop("per_image", 4),
        packages=[package],
        fetch=lambda p, d: root,
        **kw,
    )


def test_build_writes_both_splits_in_the_folder_format(fake, tmp_path):
    root, package = fake
    out = tmp_path / "photos"
    summary = _build(out, root, package)
    assert (summary["train_photos"], summary["heldout_photos"]) == (3, 8)
    rows = {
        split: [json.loads(line) for line in (out / split / "captions.jsonl").read_text().splitlines()]
        for split in ("train", "heldout")
    }
    for split, side in (("train", 32), ("heldout", 48)):
        for row in rows[split]:
            assert set(row) == {"file", "caption", "source", "license", "author"} and row["caption"] == ""
            assert row["source"].startswith("fake-wallpapers 1.0-1: /usr/share/backgrounds/")
            assert Image.open(out / split / row["file"]).size == (side, side)
        data = CaptionedImageFolder(out / split, size=side)
        assert len(data) == len(rows[split]) and data[0]["image"].shape == (3, side, side) and data[0]["caption"] == ""
    sources = {split: {r["source"] for r in rows[split]} for split in rows}
    assert not sources["train"] & sources["heldout"]  # no photo in both
    flat = next(s for s in summary["sources"] if s["path"].endswith("flat.jpg"))
    assert flat["crops"] == 0 and flat["skipped_flat"] > 0
    assert summary["skipped_flat"] >= flat["skipped_flat"]
    assert summary["packages"][0]["excluded"] == 2 and (out / "README.md").read_text().count("| Alice Example |") == 5
    assert json.loads((out / "summary.json").read_text())["kind"] == "photos"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_build_is_deterministic_per_seed_and_replaces_only_its_own_output(fake, tmp_path):
    root, package = fake
    digest = lambda d: hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted((d / "train/images").iterdir()))
    ).hexdigest()
    _build(tmp_path / "a", root, package)
    _build(tmp_path / "b", root, package)
    _build(tmp_path / "c", root, package, seed=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    _build(tmp_path / "a", root, package, per_image=2)  # a previous build is replaced
    assert len(list((tmp_path / "a/train/images").iterdir())) < len(list((tmp_path / "b/train/images").iterdir()))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirNotEmptyError):
        _build(tmp_path / "other", root, package)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_fetch_refuses_a_deb_whose_checksum_differs(tmp_path):
    apt_get = _script(tmp_path / "apt-get", 'echo "not the pinned package" > "fake_1.0-1_all.deb"\n')
    package = Package(name="fake", version="1.0-1", sha256="a" * 64, photos=(), scan_dirs=())
    with pytest.raises(PhotoSourceError, match="does not match the pinned"):
        fetch_package(package, tmp_path / "cache", apt_get=apt_get)
    assert not list((tmp_path / "cache").rglob("*.deb"))  # nothing unverified is kept
    with pytest.raises(PhotoSourceError, match="apt-get"):
        fetch_package(package, tmp_path / "cache", apt_get=str(tmp_path / "no-such-apt-get"))


def test_fetch_verifies_unpacks_and_then_reuses_the_cache(tmp_path):
    payload = b"a pinned package\n"
    calls = tmp_path / "calls"
    apt_get = _script(
        tmp_path / "apt-get", f'echo x >> "{calls}"\nprintf "a pinned package\\n" > "fake_2%3a1.0_all.deb"\n'
    )
    dpkg = _script(tmp_path / "dpkg-deb", 'mkdir -p "$3/usr/share/doc/fake" && cp "$2" "$3/usr/share/doc/fake/deb"\n')
    package = Package(name="fake", version="2:1.0", sha256=hashlib.sha256(payload).hexdigest(), photos=(), scan_dirs=())
    folder = fetch_package(package, tmp_path / "cache", apt_get=apt_get, dpkg_deb=dpkg)
    assert (folder / "usr/share/doc/fake/deb").read_bytes() == payload and (folder / STAMP).is_file()
    assert fetch_package(package, tmp_path / "cache", apt_get=apt_get, dpkg_deb=dpkg) == folder
    assert calls.read_text().count("x") == 1


def test_fetch_works_with_a_relative_cache_folder(tmp_path, monkeypatch):
    # `ldm data photos` passes data/photo-sources, relative; dpkg-deb runs inside it, so every path it gets
    # must be absolute (a relative one unpacked into data/photo-sources/data/photo-sources/..., which failed).
    payload = b"a pinned package\n"
    apt_get = _script(tmp_path / "apt-get", 'printf "a pinned package\\n" > "fake_1.0_all.deb"\n')
    dpkg = _script(tmp_path / "dpkg-deb", 'mkdir "$3/usr" && cp "$2" "$3/usr/deb"\n')
    package = Package(name="fake", version="1.0", sha256=hashlib.sha256(payload).hexdigest(), photos=(), scan_dirs=())
    monkeypatch.chdir(tmp_path)
    folder = fetch_package(package, "cache", apt_get=apt_get, dpkg_deb=dpkg)
    assert (tmp_path / folder / "usr/deb").read_bytes() == payload


def _data_command(argv: list[str]):
    # The `ldm data` parser alone: building the whole CLI imports every command (seconds); main()'s
    # LdmError -> one line + exit 2 is the same for every command and tested with the CLI.
    parser = argparse.ArgumentParser(prog="ldm")
    data_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(LdmError) as exc:
        _data_command(["data", "photos", "--out", str(tmp_path / "o"), "--size", "4"])
    assert "--size" in one_line(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(LdmError, match="not a previous photo build"):
        _data_command(["data", "photos", "--out", str(tmp_path / "busy"), "--sources", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()  # refused before fetching anything


def test_cli_prints_one_summary_line(fake, tmp_path, monkeypatch, capsys):
    root, package = fake
    monkeypatch.setattr(photos_mod, "PACKAGES", (package,))
    monkeypatch.setattr(photos_mod, "fetch_package", lambda p, d: root)
    assert (
        _data_command(
            ["data", "photos", "--out", str(tmp_path / "o"), "--size", "32", "--eval-size", "48", "--per-image", "2"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "11 photos (fake-wallpapers 11)" in lines[0] and "train crops of 32 px" in lines[0]
