#!/usr/bin/env python3
"""Real photos for development and the real-data tests: 21 photographs from two Debian artwork packages,
cut into crops and split into calibration and check sets that share no photograph.

Debian bookworm's `mate-backgrounds` holds 12 photographs in usr/share/backgrounds/mate/nature/, and
`plasma-workspace-wallpapers` 9 among its wallpapers (each at several resolutions: the largest is kept).
Everything else in both packages is a render or a gradient and is left out. The packages are fetched as
scripts/fetch_ort_headers.py fetches headers (the mirror from apt's configuration, the suite's signed index
checked when gpgv and Debian's keyring exist, each package checked against the index's SHA256).

Each photo gives 4 square crops at different positions and scales (100%, 70%, 55% and 40% of its short side,
positions drawn from a generator seeded by the photo's name), resized to 448 px: 84 images. A third of each
package's photos (4 + 3, chosen by the SHA256 of their names) go to check/, the rest to calibration/:
56 calibration and 28 check images, no photo in both.

    python scripts/fetch_photos.py      # prints the photos folder: <cache>/photos/{calib,check}/

Cache: ~/.cache/vwt-export/real (or $VWT_REAL_CACHE), outside the repository; nothing is committed. Files are
written atomically and manifest.json (each crop's package, source file, its SHA256 and crop box) is written
last: a run that finds it with every crop present does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_ort_headers as debian  # noqa: E402  (the Debian fetching helpers: mirror, signed index, .deb reading)
from real_weights import DownloadFailed, cache_dir  # noqa: E402

SUITE = "bookworm"
MATE_NATURE = "usr/share/backgrounds/mate/nature/"
MATE = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")
PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey", "OneStandsOut", "Path",
          "summer_1am")
PACKAGES = {"mate-backgrounds": MATE, "plasma-workspace-wallpapers": PLASMA}
SCALES = (1.0, 0.7, 0.55, 0.4)  # of the photo's short side
SIZE = 448
CHECK_SHARE = 3  # every third photo of a package (by name hash) is a check photo


def _source_path(package: str, name: str, members: list[str]) -> str | None:
    """The photograph's path inside the package (plasma: the largest of the resolutions it ships)."""
    if package == "mate-backgrounds":
        path = f"{MATE_NATURE}{name}.jpg"
        return path if path in members else None
    folder = f"usr/share/wallpapers/{name}/contents/images/"
    sizes = [(int(m.group(1)) * int(m.group(2)), p) for p in members
             if p.startswith(folder) and (m := re.fullmatch(r"(\d+)x(\d+)\.(?:jpg|jpeg|png)", p[len(folder):]))]
    return max(sizes)[1] if sizes else None


def _split(names: tuple[str, ...]) -> dict[str, str]:
    order = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    n_check = round(len(names) / CHECK_SHARE)
    return {n: ("check" if i < n_check else "calib") for i, n in enumerate(order)}


def crop_boxes(name: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Square crops (left, top, right, bottom) at each scale; positions from a generator seeded by the name."""
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:16], 16))
    short = min(width, height)
    boxes = []
    for scale in SCALES:
        side = round(short * scale)
        left, top = (int(rng.integers(0, d + 1)) for d in (width - side, height - side))
        boxes.append((left, top, left + side, top + side))
    return boxes


def _downloading(what: str, fetch, *args):
    try:
        return fetch(*args)
    except OSError as e:  # urllib's errors and timeouts: the download did not happen
        raise DownloadFailed(f"error: could not download {what}: {e}") from None


def fetch_originals(folder: Path) -> list[dict]:
    """Download both packages and keep only the photographs, under folder/<package>/; returns their records."""
    from vwt_export.atomic import atomic_path

    base = debian.mirror()
    index = _downloading(f"Debian {SUITE}'s package index from {base}", debian.verified_packages_index, base, SUITE)
    records = []
    for package, names in PACKAGES.items():
        entry = debian.package_entry(index, package, SUITE)
        print(f"fetching {package} {entry['Version']} ({int(entry['Size']) >> 20} MiB) from {base}", file=sys.stderr)
        deb = _downloading(f"{package} from {base}", debian.get, f"{base}/{entry['Filename']}")
        if hashlib.sha256(deb).hexdigest() != entry["SHA256"]:
            raise SystemExit(f"error: {entry['Filename']} does not match its SHA256 in the package index")
        members = debian.ar_members(deb)
        data = members[next(n for n in members if n.startswith("data.tar"))]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            by_path = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            for name in names:
                path = _source_path(package, name, list(by_path))
                if path is None:
                    raise SystemExit(f"error: {package} {entry['Version']} has no photograph '{name}'")
                blob = tar.extractfile(by_path[path]).read()
                target = folder / package / f"{name}{Path(path).suffix}"
                with atomic_path(target) as tmp:
                    tmp.write_bytes(blob)
                records.append({"package": f"{package} {entry['Version']}", "path": path, "name": name,
                                "file": str(target.relative_to(folder.parent)),
                                "sha256": hashlib.sha256(blob).hexdigest()})
    return records


def fetch(cache: str | Path | None = None) -> Path:
    """The photos folder (calib/ and check/ inside), fetched and cropped if not already there."""
    from PIL import Image

    from vwt_export.atomic import atomic_path, write_text

    root = cache_dir(cache) / "photos"
    manifest = root / "manifest.json"
    if manifest.is_file():
        crops = json.loads(manifest.read_text())["crops"]
        if all((root / c["file"]).is_file() for c in crops):
            return root
    originals = fetch_originals(root / "originals")
    crops = []
    for package, names in PACKAGES.items():
        split = _split(names)
        for rec in (r for r in originals if r["package"].split()[0] == package):
            with Image.open(root / rec["file"]) as img:
                img = img.convert("RGB")
                for i, box in enumerate(crop_boxes(rec["name"], *img.size)):
                    out = Path(split[rec["name"]]) / f"{rec['name']}_{i}.jpg"
                    with atomic_path(root / out) as tmp:
                        img.crop(box).resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(tmp, "JPEG", quality=95)
                    crops.append({"file": str(out), "split": split[rec["name"]], "source": rec["path"],
                                  "package": rec["package"], "source_sha256": rec["sha256"], "box": list(box)})
    listed = {root / c["file"] for c in crops}
    for stale in [f for s in ("calib", "check") for f in (root / s).iterdir() if f not in listed]:
        stale.unlink()  # left by an earlier run with other settings: the sets hold exactly what the manifest lists
    write_text(manifest, json.dumps({"suite": SUITE, "size": SIZE, "scales": SCALES, "crops": crops}, indent=1))
    counts = {s: sum(c["split"] == s for c in crops) for s in ("calib", "check")}
    print(f"wrote {counts['calib']} calibration and {counts['check']} check crops of {len(originals)} photographs "
          f"in {root}", file=sys.stderr)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="cache folder (default ~/.cache/vwt-export/real or $VWT_REAL_CACHE)")
    print(fetch(ap.parse_args().cache))


if __name__ == "__main__":
    main()
