"""Image loading that survives real files; finding images; ImageNet class names."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet import EffnetError
from effnet.data import (DEFAULT_MAX_PIXELS, ImageLoadError, find_images, imagenet_class_names,
                         imagenet_class_table, load_image)

PHOTOS = Path(__file__).parent / "fixtures" / "transforms"


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` but holds almost no data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def test_real_photo_loads_as_rgb() -> None:
    img = load_image(PHOTOS / "china.jpg")
    with Image.open(PHOTOS / "china.jpg") as raw:
        assert img.mode == "RGB" and img.size == raw.size
        assert np.array_equal(pixels(img), pixels(raw.convert("RGB")))


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90-degree clockwise turn
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "o.jpg")
    assert img.size == (20, 40)
    top, bottom = pixels(img)[5, 10], pixels(img)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_greyscale_palette_and_bilevel(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert pixels(load_image(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    assert pixels(load_image(tmp_path / "b.png"))[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert pixels(load_image(tmp_path / "p.png"))[0, 0].tolist() == [10, 200, 30]


def test_transparency_composited_on_white(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "pt.png", transparency=0)  # palette index 0 (black) is transparent
    img = pixels(load_image(tmp_path / "pt.png"))
    assert img[0, 0].tolist() == [255, 0, 0] and img[2, 2].tolist() == [255, 255, 255]
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert pixels(load_image(tmp_path / "clear.png"))[1, 1].tolist() == [255, 255, 255]
    Image.new("RGBA", (4, 4), (0, 0, 255, 128)).save(tmp_path / "half.png")
    half = pixels(load_image(tmp_path / "half.png"))[1, 1]
    assert abs(half[0] - 127) <= 1 and half[2] == 255
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert pixels(load_image(tmp_path / "la.png"))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_and_16_bit(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = pixels(load_image(tmp_path / "c.jpg"))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    img = pixels(load_image(tmp_path / "16.png"))
    assert img[:, :, 0].tolist() == [[0, 128], [255, 4]] and img.shape == (2, 2, 3)
    Image.fromarray(arr.astype(np.int32), "I").save(tmp_path / "32.tif")
    assert pixels(load_image(tmp_path / "32.tif"))[1, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.array([[0.0, 0.5]], np.float32), "F").save(tmp_path / "f.tif")
    assert pixels(load_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128]


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageLoadError, match="decompression bomb") as e:
        load_image(bomb)
    assert str(bomb) in str(e.value) and "10,000,000,000" in str(e.value)
    # between Pillow's warning and error thresholds: our own check names the size and the limit
    big = png_header_only(tmp_path / "big.png", 10_000, 10_000)
    with pytest.raises(ImageLoadError, match=r"10000x10000 = 100,000,000 pixels exceeds the limit of 89,478,485"):
        load_image(big)
    with pytest.raises(ImageLoadError, match="truncated") as e:  # a raised limit lets it past the guard
        load_image(big, max_pixels=200_000_000)
    assert str(big) in str(e.value)
    with pytest.raises(ImageLoadError, match="limit of 100 pixels"):
        load_image(PHOTOS / "flower.jpg", max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # the global limit is restored


def test_broken_files_name_the_file(tmp_path: Path) -> None:
    data = (PHOTOS / "flower.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a picture\n")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "folder.jpg").mkdir()
    cases = {"trunc.jpg": "truncated", "empty.jpg": "empty file", "text.jpg": "not an image",
             "garbage.png": "not an image", "missing.jpg": "no such file", "folder.jpg": "not a file"}
    for name, what in cases.items():
        with pytest.raises(ImageLoadError, match=what) as e:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
        assert isinstance(e.value, EffnetError)


def test_find_images(tmp_path: Path) -> None:
    for rel in ("b/img10.jpg", "b/img2.PNG", "a/x.jpeg", "a/notes.txt", ".hidden/h.jpg", "b/.dot.jpg", "c/d/e.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "loose.dat").write_bytes(b"x")
    found = find_images([tmp_path, tmp_path / "loose.dat", tmp_path / "b" / "img2.PNG"])
    rel = [str(p.relative_to(tmp_path)) for p in found]
    assert rel == ["a/x.jpeg", "b/img2.PNG", "b/img10.jpg", "c/d/e.webp", "loose.dat"]
    with pytest.raises(ImageLoadError, match="no such file or folder: .*nope"):
        find_images([tmp_path, tmp_path / "nope"])


def test_imagenet_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[-1] == "toilet tissue"
    table = imagenet_class_table()
    assert [c.index for c in table] == list(range(1000))
    assert table[1].synset == "n01443537" and table[1].lemmas == ("goldfish", "Carassius auratus")
    assert all(c.synset.startswith("n") and len(c.synset) == 9 for c in table)


def test_packaged_class_file_matches_reference() -> None:
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "imagenet1k_classes.tsv"
    shipped = Path(__file__).resolve().parents[1] / "src" / "effnet" / "data" / "imagenet1k_classes.tsv"
    if not ref.exists():
        pytest.skip("reference class list not available outside the development tree")
    assert shipped.read_bytes() == ref.read_bytes()
