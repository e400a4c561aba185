"""The photographs of the photo dataset: pinned Debian packages, their licences checked image by image.

Each package is fetched with `apt-get download` (Debian's own client) at a pinned version, checked
against a pinned sha256 and unpacked with `dpkg-deb -x`; nothing is fetched at training time.

    ldm data photos --sources data/photo-sources     # fetches what is missing, then builds

Every kept image is pinned by its installed path with the licence and author recorded for it, and the
build checks them against the package's own notices: the DEP-5 stanza of
/usr/share/doc/<pkg>/copyright that names the file, or, where that file has only a blanket stanza
that does not describe the images, the licence notice shipped beside them (see `Photo.notice`).
Licences kept: CC0, public domain, CC-BY and CC-BY-SA (any version) and permissive ones, so model
weights trained on them can be released under CC-BY-SA-4.0; GPL-family, NC, ND or unclear ones are not.

Packages examined and left out entirely (Debian 12 "bookworm"):
  gnome-backgrounds 43.1-1: no photographs (3D renders and vector art), and its copyright file
      describes older images, not the ones shipped.
  mate-backgrounds 1.26.0-1: the photographs are GPL-2+; the CC-BY-SA-4.0 ones are blurred abstracts.
  plasma-workspace-wallpapers 4:5.27.5-2: the photographs are LGPL-3 (metadata) / GPL-2+ (copyright
      file); the CC-BY-SA-4.0 ones are digital art.
  ukui-wallpapers, desktop-base, sway-backgrounds, xfdesktop4-data, lomiri-wallpapers: vector art, logos.
  enlightenment-data 0.25.4-2: 23 photographic backgrounds (BSD-2-clause per its copyright file, no
      photographer named) inside .edj containers that need EFL's edje_decc to unpack.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ldm.core.errors import LdmError

DEFAULT_SOURCES_DIR = "data/photo-sources"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".svg", ".tif", ".tiff", ".bmp")
STAMP = ".verified-sha256"  # written in an unpacked package folder once its .deb matched the pin


class PhotoSourceError(LdmError, RuntimeError):
    """A photo package that cannot be fetched, verified, unpacked or whose licence notices disagree with the pins."""


@dataclass(frozen=True)
class Photo:
    """One kept image: its installed path, and the licence and author recorded with every crop of it."""
    path: str                 # inside the package, e.g. "usr/share/backgrounds/x.jpg"
    licence: str              # SPDX-style id
    author: str               # must appear in the notice that grants the licence
    source_path: str = ""     # the path that the DEP-5 `Files:` patterns name (upstream source tree)
    notice: str = ""          # a licence notice file in the package, used instead of the DEP-5 stanza
    notice_text: str = ""     # ...which must contain this text (the licence statement)

    @property
    def name(self) -> str:
        return Path(self.path).stem


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str               # of the .deb as Debian's archive serves it
    photos: tuple[Photo, ...]
    scan_dirs: tuple[str, ...]                 # where its images are; every image there is kept or excluded
    excluded: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (glob on the path, reason), first match
    note: str = ""

    @property
    def folder_name(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}"

    @property
    def spec(self) -> str:
        return f"{self.name} {self.version}"



def _lomiri(release: str, file: str, licence: str, author: str) -> Photo:
    return Photo(path=f"usr/share/backgrounds/{file}", licence=licence, author=author, source_path=f"{release}/{file}")


_LXQT_NOTICE = "usr/share/lxqt/wallpapers/License"
_LXQT_TEXT = "Licensed under https://creativecommons.org/licenses/by-sa/3.0/"


def _lxqt(file: str) -> Photo:
    return Photo(path=f"usr/share/lxqt/wallpapers/{file}", licence="CC-BY-SA-3.0", author="stefonarch",
                 source_path=f"wallpapers/{file}", notice=_LXQT_NOTICE, notice_text=_LXQT_TEXT)


_SKIMAGE = "usr/lib/python3/dist-packages/skimage/data"


def _skimage(file: str, licence: str, author: str, text: str) -> Photo:
    return Photo(path=f"{_SKIMAGE}/{file}", licence=licence, author=author, source_path=f"skimage/data/{file}",
                 notice=f"{_SKIMAGE}/_fetchers.py", notice_text=text)


_NOT_PHOTO = "not a photograph (gradient, vector or digital art, logo)"

PACKAGES: tuple[Package, ...] = (
    Package(
        name="lomiri-wallpapers-16.04", version="20.04.0-2",
        sha256="a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
        scan_dirs=("usr/share/backgrounds",),
        photos=(
            _lomiri("16.04", "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0", "Sander Klootwijk"),
            _lomiri("16.04", "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0", "Bolly"),
            _lomiri("16.04", "Picture_0B_by_freespace.jpg", "CC-BY-4.0", 'Trevor "Freespace"'),
            _lomiri("16.04", "Picture_1A_by_freespace.jpg", "CC-BY-4.0", 'Trevor "Freespace"'),
            _lomiri("16.04", "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0", "Jakub Mede"),
            _lomiri("16.04", "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
            _lomiri("16.04", "analogpattern_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
            _lomiri("16.04", "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
            _lomiri("16.04", "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
            _lomiri("16.04", "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
            _lomiri("16.04", "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
            _lomiri("16.04", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
            _lomiri("16.04", "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "Clemens Engelhardt"),
            _lomiri("16.04", "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
        ),
        excluded=(("*/umang_by_Abhishek_Mudgal.jpg", _NOT_PHOTO),),
    ),
    Package(
        name="lomiri-wallpapers-20.04", version="20.04.0-2",
        sha256="d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
        scan_dirs=("usr/share/backgrounds",),
        photos=(_lomiri("20.04", "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "Lukas Baubkus"),),
        excluded=(("*", _NOT_PHOTO),),  # Fossa, Infinite-Sea, Painting-Colors
    ),
    Package(
        name="lxqt-themes", version="1.2.0-1",
        sha256="d518df36b515b09d36cb00b12645dd8ce170bb82bb0966297741905ce3edc8e1",
        scan_dirs=("usr/share/lxqt/wallpapers",),
        photos=tuple(_lxqt(f) for f in (
            "after-the-rain.jpg", "appleflower.png", "beam.png", "butterfly.png", "drop.png", "flowers.png",
            "fog.jpg", "this-is-not-windows.jpg")),
        excluded=(
            ("*/Butterfly-Kenneth-Wimer.jpg", "photograph whose author the licence notice does not credit"),
            ("*/Valendas.png", "photograph whose author the licence notice does not credit"),
            ("*/cloud.png", "photograph whose author the licence notice does not credit"),
            ("*/kde-plasma.png", "LGPL-3 (copyright file), and digital art"),
            ("*", _NOT_PHOTO),
        ),
        note=("Debian's copyright file puts the wallpapers under its blanket `Files: *` stanza (LGPL-2.1+, "
              "Razor team 2010-2012), which predates them; the licence notice shipped beside them "
              f"(/{_LXQT_NOTICE}) states CC-BY-SA-3.0 and credits stefonarch for the photographs kept."),
    ),
    Package(
        name="python3-skimage", version="0.19.3-8",
        sha256="728d88c3e3440f1f3712de0805dc834d29248ff07e1eec8c0f3da07606f752f9",
        scan_dirs=(_SKIMAGE,),
        photos=(
            _skimage("astronaut.png", "public-domain", "NASA", "released into the public domain"),
            _skimage("chelsea.png", "CC0-1.0", "Stefan van der Walt", "CC0 by the photographer (Stefan van der Walt)"),
            _skimage("coffee.png", "CC0-1.0", "Rachel Michetti", "CC0 by the photographer (Rachel Michetti)"),
            _skimage("rocket.jpg", "public-domain", "SpaceX", "The image was captured by SpaceX and `released in the public domain"),  # noqa: E501
        ),
        excluded=(
            ("*/motorcycle_*.png", "photograph with no licence stated in the package (Middlebury stereo data)"),
            ("*", "not a colour photograph of a scene (test pattern, greyscale, scientific or medical image)"),
        ),
        note=("Debian's copyright file covers the sample images by its blanket `Files: *` stanza "
              "(BSD-3-Clause); each kept image's own licence is stated in skimage/data/_fetchers.py."),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Licences

def licence_verdict(licence: str) -> tuple[bool, str]:
    """Whether a licence (SPDX-style id, or "A or B") lets model weights trained on the image be CC-BY-SA-4.0."""
    alternatives = [a.strip() for a in re.split(r"\s+or\s+|\s*\|\s*", licence.strip(), flags=re.I) if a.strip()]
    verdicts = [_one_licence(a) for a in alternatives] or [(False, "no licence stated")]
    allowed = [v for v in verdicts if v[0]]
    return allowed[0] if allowed else verdicts[0]


def _one_licence(licence: str) -> tuple[bool, str]:
    key = licence.upper().replace("_", "-").replace(" ", "-")
    if re.search(r"(^|-)(NC|ND)(-|$)", key) or "NONCOMMERCIAL" in key or "NODERIV" in key:
        return False, f"{licence}: non-commercial or no-derivatives"
    if re.match(r"^(L|A)?GPL", key) or key.startswith("GFDL"):
        return False, f"{licence}: copyleft software licence, not compatible with CC-BY-SA-4.0 weights"
    if key.startswith("CC0") or key in {"PUBLIC-DOMAIN", "PD", "PUBLICDOMAIN"}:
        return True, f"{licence}: no conditions"
    if re.match(r"^CC-BY-SA(-\d(\.\d)?)?", key):
        return True, f"{licence}: attribution, ShareAlike"
    if re.match(r"^CC-BY(-\d(\.\d)?)?$", key):
        return True, f"{licence}: attribution"
    if re.match(r"^(BSD-\d-CLAUSE|MIT|EXPAT|ISC|ZLIB|APACHE-2\.0)$", key):
        return True, f"{licence}: permissive, attribution"
    return False, f"{licence}: unclear or not a known free licence"


@dataclass
class Stanza:
    files: list[str]
    copyright: str
    licence: str


def parse_dep5(text: str) -> list[Stanza]:
    """The `Files:` stanzas of a machine-readable (DEP-5) copyright file, in order."""
    if not text.lstrip().lower().startswith("format:"):
        raise PhotoSourceError("not a machine-readable (DEP-5) copyright file: it has no Format: field")
    stanzas: list[Stanza] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                last = last.strip().lower()
                fields[last] = value.strip()
        if "files" in fields:
            stanzas.append(Stanza(files=fields["files"].split(), copyright=fields.get("copyright", ""),
                                  licence=fields.get("license", "").split("\n")[0].strip()))
    return stanzas


def _dep5_pattern(pattern: str) -> re.Pattern:
    # DEP-5: "*" matches any characters, "/" included; "?" one character; nothing else is special.
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z")


def stanza_for(stanzas: list[Stanza], path: str) -> Stanza | None:
    """The stanza that governs a source path: the last one whose Files patterns match it, as DEP-5 says."""
    found = None
    for stanza in stanzas:
        if any(_dep5_pattern(p).match(path) for p in stanza.files):
            found = stanza
    return found


def check_photo(root: Path, package: Package, photo: Photo, stanzas: list[Stanza]) -> dict:
    """Check one pinned image against the package's notices; returns its attribution record."""
    where = f"{package.spec}: /{photo.path}"
    if not (root / photo.path).is_file():
        raise PhotoSourceError(f"{where}: pinned image not in the package")
    stanza = stanza_for(stanzas, photo.source_path or photo.path)
    dep5 = stanza.licence if stanza else "none"
    if photo.notice:
        notice = root / photo.notice
        text = notice.read_text(encoding="utf-8", errors="replace") if notice.is_file() else ""
        if photo.notice_text not in text or photo.author not in text:
            raise PhotoSourceError(f"{where}: /{photo.notice} no longer states {photo.notice_text!r} and credits {photo.author!r}")  # noqa: E501
        granted_by = f"/{photo.notice} (the copyright file's stanza for it: {dep5})"
    else:
        if stanza is None:
            raise PhotoSourceError(f"{where}: no stanza of the copyright file names {photo.source_path}")
        if stanza.licence != photo.licence or photo.author not in stanza.copyright:
            raise PhotoSourceError(f"{where}: the copyright file says {stanza.licence} by {stanza.copyright!r}, "
                                   f"the pin says {photo.licence} by {photo.author!r}")
        granted_by = f"/usr/share/doc/{package.name}/copyright"
    allowed, reason = licence_verdict(photo.licence)
    if not allowed:
        raise PhotoSourceError(f"{where}: pinned with a licence that is not kept ({reason})")
    return {"package": package.name, "version": package.version, "path": "/" + photo.path, "licence": photo.licence,
            "author": photo.author, "copyright": stanza.copyright if stanza and not photo.notice else photo.author,
            "licence_from": granted_by, "note": reason}


def survey(root: Path, package: Package) -> tuple[list[dict], list[dict]]:
    """Every image in the package's scan_dirs, kept (checked pins) or excluded (with the reason)."""
    copyright_file = root / "usr/share/doc" / package.name / "copyright"
    if not copyright_file.is_file():
        raise PhotoSourceError(f"{package.spec}: no copyright file at /{copyright_file.relative_to(root)}")
    stanzas = parse_dep5(copyright_file.read_text(encoding="utf-8", errors="replace"))
    kept = [check_photo(root, package, photo, stanzas) for photo in package.photos]
    pinned = {photo.path for photo in package.photos}
    excluded: list[dict] = []
    for folder in package.scan_dirs:
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if rel in pinned or path.is_symlink() or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            reason = next((r for pattern, r in package.excluded if fnmatch.fnmatchcase(rel, pattern)), "not pinned")
            excluded.append({"path": "/" + rel, "reason": reason})
    return kept, excluded


# ---------------------------------------------------------------------------------------------------------
# Fetching

def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise PhotoSourceError(f"{argv[0]} not found: {what} needs Debian's tools (apt-get, dpkg-deb)") from exc
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())[-300:]
        raise PhotoSourceError(f"{what} failed: {message}")


def _download(package: Package, dest: Path, apt_get: str) -> Path:
    """apt-get download into a scratch folder, verify, then move into place: a .deb in dest always matches its pin."""
    deb = dest / f"{package.folder_name}_all.deb"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        _run([apt_get, "download", f"{package.name}={package.version}"], Path(tmp),
             f"apt-get download {package.name}={package.version} (the pin is from Debian 12 bookworm; run apt-get update)")  # noqa: E501
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise PhotoSourceError(f"apt-get download {package.name} left {len(debs)} .deb files, expected 1")
        got = sha256_of(debs[0])
        if got != package.sha256:
            raise PhotoSourceError(f"{package.spec}: sha256 {got} does not match the pinned {package.sha256}; refusing it")  # noqa: E501
        os.replace(debs[0], deb)
    return deb


def fetch_package(package: Package, dest: str | os.PathLike = DEFAULT_SOURCES_DIR, apt_get: str = "apt-get",
                  dpkg_deb: str = "dpkg-deb") -> Path:
    """The unpacked tree of a pinned package under dest, fetched and verified first if needed."""
    dest = Path(dest)
    folder = dest / package.folder_name
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text().strip() == package.sha256:
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    deb = dest / f"{package.folder_name}_all.deb"
    if not (deb.is_file() and sha256_of(deb) == package.sha256):
        deb = _download(package, dest, apt_get)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    try:
        _run([dpkg_deb, "-x", str(deb.resolve()), str(tmp.resolve())], dest, f"dpkg-deb -x {deb.name}")
        (tmp / STAMP).write_text(package.sha256 + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
