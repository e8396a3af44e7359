"""The image corpus: every kind of file a folder of images can hold, generated here (nothing binary is committed),
each with its exact outcome: the picture a viewer shows, or a skip with one warning that names the file."""

import io
import logging
import struct
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import vwt_export as vx
from vwt_export import data
from vwt_export.errors import VWTError
from vwt_export.data import decode_once, iter_image_batches, load_image, readable_images, to_rgb
from vwt_export.demo import write_demo_images
from vwt_export.models import transform

from .files import png


def as_tensor(im):
    return torch.from_numpy(np.array(im))


def rgb(path, target=None):
    return np.asarray(load_image(path, target))


@pytest.fixture(scope="module")
def grey8():
    """An 8-bit grey picture with structure (a demo scene), 80 x 80."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 80)
    return np.clip(x[None, :] * 0.5 + x[:, None] * 0.3 + rng.normal(0, 20, (80, 80)), 0, 255).astype(np.uint8)


# -- 16-bit and float ------------------------------------------------------------------------------------------


def test_a_16bit_png_decodes_as_its_8bit_copy(tmp_path, grey8):
    """convert("RGB") clipped every 16-bit value to 255: an almost white image."""
    noise = np.random.default_rng(1).integers(-128, 129, grey8.shape)  # real low bits, which rounding drops
    a16 = np.clip(grey8.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    Image.fromarray(grey8).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    got = rgb(tmp_path / "deep.png")
    np.testing.assert_array_equal(got, rgb(tmp_path / "flat.png"))
    assert got.mean() == pytest.approx(grey8.mean(), abs=0.01) and (got == 255).mean() < 0.05


@pytest.mark.parametrize("fmt", ["tiff-I;16B", "pgm-16bit", "png-48bit-rgb"])
def test_other_16bit_files_decode_as_their_8bit_copy(tmp_path, grey8, fmt):
    a16 = grey8.astype(np.uint16) * 257
    path = tmp_path / ("x.tif" if fmt.startswith("tiff") else "x.pgm" if fmt.startswith("pgm") else "x.png")
    if fmt.startswith("tiff"):
        Image.frombytes("I;16B", (80, 80), a16.astype(">u2").tobytes()).save(path)
        expected = np.repeat(grey8[..., None], 3, axis=2)
    elif fmt.startswith("pgm"):
        path.write_bytes(b"P5\n80 80\n65535\n" + a16.astype(">u2").tobytes())
        expected = np.repeat(grey8[..., None], 3, axis=2)
    else:
        colour = np.stack([a16, a16[::-1], a16.T], axis=-1)
        path.write_bytes(png(80, 80, 16, 2, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in colour)))
        expected = np.stack([grey8, grey8[::-1], grey8.T], axis=-1)
    np.testing.assert_array_equal(rgb(path), expected)


def test_a_float_image_in_0_1_decodes_and_other_ranges_are_skipped_once(tmp_path, grey8, caplog):
    Image.fromarray(grey8.astype(np.float32) / 255.0, "F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(rgb(tmp_path / "unit.tif")[..., 0], grey8)
    Image.fromarray(grey8.astype(np.float32), "F").save(tmp_path / "raw.tif")  # 0..255 as floats: a guess either way
    with caplog.at_level(logging.WARNING), decode_once():
        for _ in range(3):
            batches = list(iter_image_batches([tmp_path / "raw.tif", tmp_path / "unit.tif"], as_tensor, batch_size=4))
            assert [p.name for _, ps in batches for p in ps] == ["unit.tif"]
    assert caplog.text.count("raw.tif") == 1 and "float images are read as intensities in [0, 1]" in caplog.text


def test_a_32bit_integer_tiff_is_skipped_once_not_read_as_16bit(tmp_path, grey8, caplog):
    """Mode I was always read as 0..65535: a 32-bit TIFF holding 0..255 came out almost black."""
    Image.fromarray(grey8.astype(np.int32), "I").save(tmp_path / "deep32.tif")
    Image.fromarray(grey8).save(tmp_path / "ok.png")
    assert Image.open(tmp_path / "deep32.tif").mode == "I"
    with caplog.at_level(logging.WARNING), decode_once():
        for _ in range(2):
            batches = list(iter_image_batches([tmp_path / "deep32.tif", tmp_path / "ok.png"], as_tensor, 4))
            assert [p.name for _, ps in batches for p in ps] == ["ok.png"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "deep32.tif" in line and "a 32-bit integer image: its scale is unknown" in line


@pytest.mark.parametrize("maxval", [1023, 4095, 65535])
def test_a_deep_pgm_is_scaled_by_its_own_maximum(tmp_path, grey8, maxval):
    scaled = np.rint(grey8.astype(np.float64) * maxval / 255).astype(">u2")
    (tmp_path / "x.pgm").write_bytes(f"P5\n80 80\n{maxval}\n".encode() + scaled.tobytes())
    assert np.abs(rgb(tmp_path / "x.pgm")[..., 0].astype(int) - grey8).max() <= 1


# -- the 16-bit PNG, through learning a vocabulary -----------------------------------------------------------------


def test_a_16bit_folder_learns_the_vocabulary_of_its_8bit_copy(tmp_path):
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    scenes = sorted(write_demo_images(tmp_path / "scenes", count=4, size=80, seed=3).glob("*.png"))
    (tmp_path / "8bit").mkdir()
    (tmp_path / "16bit").mkdir()
    rng = np.random.default_rng(2)
    for s in scenes:
        grey = np.asarray(Image.open(s).convert("L"))
        Image.fromarray(grey).save(tmp_path / "8bit" / s.name)
        deep = np.clip(grey.astype(np.int64) * 257 + rng.integers(-128, 129, grey.shape), 0, 65535)
        Image.fromarray(deep.astype(np.uint16)).save(tmp_path / "16bit" / s.name)
    words8 = vx.learn_vocabulary(model, tmp_path / "8bit", size=8, progress=False).words
    words16 = vx.learn_vocabulary(model, tmp_path / "16bit", size=8, progress=False).words
    assert words16.shape == words8.shape
    np.testing.assert_allclose(words16.numpy(), words8.numpy(), atol=1e-3)
    assert words8.std() > 0.1  # real words, not a flat field: the comparison can fail


# -- alpha --------------------------------------------------------------------------------------------------------


def test_transparent_pixels_show_the_white_background(tmp_path):
    """convert("RGB") dropped alpha and showed the colour hidden under transparent pixels."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere...
    rgba[:2, :, 3] = 255  # ...opaque on top, transparent below
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = rgb(tmp_path / "rgba.png")
    assert (got[:2] == [255, 0, 0]).all() and (got[2:] == [255, 255, 255]).all()

    la = Image.new("LA", (4, 4), (0, 128))  # black at half opacity on white: mid grey
    la.save(tmp_path / "la.png")
    assert abs(int(rgb(tmp_path / "la.png")[0, 0, 0]) - 127) <= 1

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 100, 50, 0, 0, 0])
    pal.paste(1, (0, 2, 4, 4))  # palette entry 1 (black) below, declared transparent
    pal.save(tmp_path / "palette.png", transparency=1)
    got = rgb(tmp_path / "palette.png")
    assert (got[:2] == [200, 100, 50]).all() and (got[2:] == [255, 255, 255]).all()

    pa = Image.new("PA", (2, 1), (1, 0))  # Pillow writes no PA file: the conversion itself
    pa.putpalette([0, 0, 0, 10, 20, 30])
    assert np.asarray(to_rgb(pa)).tolist() == [[[255, 255, 255]] * 2]


def test_a_16bit_grey_png_with_a_transparent_value_shows_white_there(tmp_path):
    """The transparency key of a 16-bit grey PNG was ignored: the keyed pixels showed their grey."""
    values = np.array([[0, 1000, 65535, 1000]], ">u2")
    rows = b"\x00" + values.tobytes()
    (tmp_path / "keyed.png").write_bytes(png(4, 1, 16, 0, rows, chunks=((b"tRNS", struct.pack(">H", 1000)),)))
    assert np.asarray(Image.open(tmp_path / "keyed.png")).tolist() == [[0, 1000, 65535, 1000]]  # Pillow: the values
    assert rgb(tmp_path / "keyed.png")[0, :, 0].tolist() == [0, 255, 255, 255]
    (tmp_path / "dark-key.png").write_bytes(png(4, 1, 16, 0, rows, chunks=((b"tRNS", struct.pack(">H", 5)),)))
    assert rgb(tmp_path / "dark-key.png")[0, :, 0].tolist() == [0, 4, 255, 4]  # a key no pixel has: nothing changes


def test_a_48bit_png_with_a_transparent_colour_is_skipped(tmp_path):
    """Pillow reads 16-bit RGB as 8-bit and keeps the 16-bit key: which pixels it means cannot be told."""
    colour = np.array([[[1000, 2000, 3000], [65535, 0, 0]]], ">u2")
    rows = b"\x00" + colour.tobytes()
    (tmp_path / "keyed48.png").write_bytes(png(2, 1, 16, 2, rows, chunks=((b"tRNS", struct.pack(">HHH", 1000, 2000, 3000)),)))
    with pytest.raises(data.UnsupportedImage, match="a 16-bit RGB PNG with a transparent colour"):
        load_image(tmp_path / "keyed48.png")
    (tmp_path / "plain48.png").write_bytes(png(2, 1, 16, 2, rows))
    assert rgb(tmp_path / "plain48.png").tolist() == [[[3, 7, 11], [255, 0, 0]]]  # without a key: the high bytes


def test_premultiplied_grey_alpha_is_composited_like_plain_grey_alpha():
    """The docstring listed La as handled, but convert("RGBA") raised on it (and the image was skipped)."""
    premultiplied = Image.new("La", (2, 1), (64, 128))  # grey 127 at half opacity, premultiplied
    plain = Image.new("LA", (2, 1), (127, 128))
    assert np.asarray(to_rgb(premultiplied)).tolist() == np.asarray(to_rgb(plain)).tolist()
    assert abs(int(np.asarray(to_rgb(plain))[0, 0, 0]) - 191) <= 1  # half-way to white


# -- colour spaces, bit depths, frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode,fmt,tolerance", [("CMYK", "JPEG", 8), ("YCbCr", "TIFF", 3), ("LAB", "TIFF", 3),
                                                ("L", "PNG", 0), ("1", "PNG", 0), ("P", "GIF", 0)])
def test_other_modes_decode_to_the_picture(tmp_path, mode, fmt, tolerance):
    colours = np.array([[20, 40, 60], [200, 180, 30], [90, 160, 220], [250, 250, 250]], np.uint8)
    picture = np.repeat(np.repeat(colours.reshape(2, 2, 3), 16, 0), 16, 1)
    if mode in ("L", "1"):
        picture = np.repeat(np.asarray(Image.fromarray(picture).convert(mode).convert("L"))[..., None], 3, 2)
    path = tmp_path / f"x.{fmt.lower()}"
    image = Image.fromarray(picture)
    image = image.quantize(4) if mode == "P" else image.convert(mode)  # 4 colours: a palette holds them exactly
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    assert Image.open(path).mode == ("P" if fmt == "GIF" else mode)
    assert np.abs(rgb(path).astype(int) - picture).max() <= tolerance


def test_an_animation_is_read_as_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert (rgb(tmp_path / "anim.gif") == [255, 0, 0]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path, orientation):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20, 0] = 255  # left half red, right half blue, top row green: every orientation differs
    stored[:, 20:, 2] = 255
    stored[:2, :, 1] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.png")).convert("RGB"))
    got = rgb(tmp_path / "photo.png")
    assert got.shape == expected.shape == ((20, 40, 3) if orientation <= 4 else (40, 20, 3))
    np.testing.assert_array_equal(got, expected)


def test_a_broken_exif_block_keeps_the_picture(tmp_path):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "x.jpg", exif=b"Exif\x00\x00garbage" + bytes(20))
    assert np.abs(rgb(tmp_path / "x.jpg").astype(int) - [10, 200, 30]).max() <= 3


# -- size ---------------------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_skipped_like_an_unreadable_file(tmp_path, caplog):
    """It stopped the run with "unexpected DecompressionBombError"."""
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a_good.png")
    (tmp_path / "bomb.png").write_bytes(png(16000, 12000, 8, 2))  # a header: 192 megapixels, no data needed
    with caplog.at_level(logging.WARNING), decode_once():
        assert readable_images(tmp_path) == [tmp_path / "a_good.png"]
        batches = list(iter_image_batches([tmp_path / "bomb.png", tmp_path / "a_good.png"], as_tensor, 4))
    assert [p.name for _, ps in batches for p in ps] == ["a_good.png"]
    assert caplog.text.count("bomb.png") == 1 and "too large to decode safely" in caplog.text


def test_a_large_image_is_decoded_reduced_once_and_without_warnings(tmp_path, monkeypatch):
    """A 12000x9000 JPEG was decoded at full size five times, warning each time; at this scale: Pillow's limit
    lowered, so a 2400x1800 image counts as large."""
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    tf = transform(model)
    scene = write_demo_images(tmp_path / "s", count=1, size=600, seed=4) / "scene_000.png"
    Image.open(scene).convert("RGB").resize((2400, 1800)).save(tmp_path / "big.jpg", quality=92)
    full = tf(Image.open(tmp_path / "big.jpg").convert("RGB"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2400 * 1800 - 1)  # over the limit, under twice the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would raise here
        # the transform resizes to 71: 1800 / 8 = 225 >= 3 x 71 (REDUCED_MARGIN), so JPEG's DCT decodes 1/8
        assert load_image(tmp_path / "big.jpg", data.resize_target(tf)).size == (300, 225)
        with decode_once() as state:
            for _ in range(3):
                (x, _), = list(iter_image_batches([tmp_path / "big.jpg"], tf, 4))
    assert state.decodes == 1
    # the resize still averages >= 3x3 source pixels per output pixel: within 2 of 255 levels (std 0.5)
    assert float((x[0] - full).abs().max()) <= 2 / 255 / 0.5 + 1e-6


def test_a_png_too_large_for_its_use_is_reduced_after_decoding(tmp_path):
    Image.new("RGB", (1200, 1200), (50, 60, 70)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", target=71).size == (300, 300)
    assert load_image(tmp_path / "big.png").size == (1200, 1200)  # no transform known: full size


def test_a_thin_strip_is_cut_to_the_centre_the_crop_keeps(tmp_path):
    """Resizing a 20000x2 strip's shorter side to the model's size made a 710000-pixel-wide image."""
    strip = np.zeros((2, 20000, 3), np.uint8)
    strip[:, 9992:10008] = 255  # the centre, white
    Image.fromarray(strip).save(tmp_path / "strip.png")
    model = vx.load_model("vit_tiny_patch16_224", weights="random", img_size=64, depth=1, num_classes=10)
    tf = transform(model)
    im = load_image(tmp_path / "strip.png", data.resize_target(tf))
    assert im.size == (16, 2) and (np.asarray(im) == 255).all()
    assert tuple(tf(im).shape) == (3, 64, 64)


# -- unreadable files: skipped, one warning each, once per run ----------------------------------------------------


def test_a_truncated_jpeg_is_warned_about_once_per_run(tmp_path, caplog):
    """The same warning was printed 8 times: once per stage that decoded the file."""
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "good.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    files = [tmp_path / "good.png", tmp_path / "trunc.jpg"]
    with caplog.at_level(logging.WARNING), decode_once() as state:
        assert readable_images(tmp_path) == files  # the header is fine
        for _ in range(4):
            assert [p.name for _, ps in iter_image_batches(files, as_tensor, 4) for p in ps] == ["good.png"]
    assert caplog.text.count("trunc.jpg") == 1 and state.decodes == 2


def test_every_unreadable_file_is_named_in_a_warning_of_its_own(tmp_path, caplog):
    """Past the 10th, unreadable files were skipped without a line: the spec wants each one named."""
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    for i in range(14):
        (tmp_path / f"bad{i:02d}.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING), decode_once():
        readable_images(tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 14 and all(f"bad{i:02d}.jpg" in lines[i] for i in range(14))


def test_a_file_named_two_ways_is_warned_about_once(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING), decode_once():
        for path in (tmp_path / "bad.jpg", tmp_path / "sub" / ".." / "bad.jpg"):
            with pytest.raises(VWTError):
                list(iter_image_batches([path], as_tensor, 4))
    assert len(caplog.records) == 1 and "bad.jpg" in caplog.records[0].getMessage()


def test_runs_in_two_threads_do_not_share_their_decoding_state():
    """decode_once kept its state in a module global: a second thread's run joined the first one's."""
    entered, release, states = threading.Event(), threading.Event(), {}

    def first():
        with decode_once() as state:
            states["first"] = state
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(10)
    try:
        with decode_once() as state:
            states["second"] = state
    finally:
        release.set()
        thread.join(10)
    assert states["first"] is not states["second"]


def test_files_that_are_not_images_are_skipped_one_line_each(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a jpeg")
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image's name is not listed at all
    (tmp_path / "header-only.png").write_bytes(png(8, 8, 8, 2))  # no pixel data: fails when decoded
    with caplog.at_level(logging.WARNING), decode_once():
        found = readable_images(tmp_path)
        assert found == [tmp_path / "good.png", tmp_path / "header-only.png"]
        assert [p.name for _, ps in iter_image_batches(found, as_tensor, 4) for p in ps] == ["good.png"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(line.startswith("skipping unreadable image") for line in lines)
    assert {n for n in ("empty.png", "text.jpg", "header-only.png") if any(n in line for line in lines)} == {
        "empty.png", "text.jpg", "header-only.png"}
