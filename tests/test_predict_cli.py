"""`effnet predict` and `effnet embed` over folders mixing real photos, odd formats and broken files."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import effnet
from effnet.cli import main
from effnet.data import create_transform, imagenet_class_names, load_image, resolve_model_data_config

MODEL = "efficientnet_b1_pruned"
SIZE = "64"  # small input keeps each run around a second on CPU
PHOTOS = Path(__file__).parent / "fixtures" / "transforms"
GOOD = ["china.jpg", "flower.jpg", "odd/alpha.png", "odd/grey.png", "odd/palette.gif", "odd/cmyk.jpg",
        "odd/deep16.png"]
BAD = ["broken/truncated.jpg", "broken/empty.jpg", "broken/text.jpg", "broken/bomb.png"]


def _bomb_png(path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    (images / "odd").mkdir(parents=True)
    (images / "broken").mkdir()
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(PHOTOS / name, images / name)
    Image.new("RGBA", (30, 20), (0, 128, 0, 100)).save(images / "odd/alpha.png")
    Image.new("L", (25, 40), 90).save(images / "odd/grey.png")
    Image.new("P", (16, 16), 3).save(images / "odd/palette.gif")
    Image.new("CMYK", (20, 20), (0, 200, 200, 10)).save(images / "odd/cmyk.jpg")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(images / "odd/deep16.png")
    data = (PHOTOS / "flower.jpg").read_bytes()
    (images / "broken/truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "broken/empty.jpg").write_bytes(b"")
    (images / "broken/text.jpg").write_text("this is not a JPEG\n")
    _bomb_png(images / "broken/bomb.png")
    torch.manual_seed(0)
    model = effnet.create_model(MODEL)
    with torch.no_grad():  # a spread of logits so the top-k order is well defined
        model.classifier.bias.copy_(torch.linspace(-3, 3, 1000))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "weights.safetensors"))
    return root


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def predict(workdir: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "predict", "--model", MODEL, "--checkpoint", str(workdir / "weights.safetensors"),
               "--img-size", SIZE, "--device", "cpu", *extra)


def test_predict_text_reports_good_and_names_bad(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = predict(workdir, capsys, "--topk", "3", "--batch-size", "3", str(workdir / "images"))
    assert rc == 1
    for name in GOOD:
        path = str(workdir / "images" / name)
        assert path in out.splitlines()
        block = out.split(path + "\n", 1)[1].splitlines()[:3]
        assert all(line.startswith("  ") and "[" in line for line in block)
    for name in BAD:
        assert str(workdir / "images" / name) in err and str(workdir / "images" / name) not in out
    assert "decompression bomb" in err and "empty file" in err and "truncated" in err
    assert f"{len(BAD)} of {len(GOOD) + len(BAD)} input(s) failed" in err


def test_predict_json(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = predict(workdir, capsys, "--format", "json", "--topk", "4", str(workdir / "images"))
    assert rc == 1
    entries = json.loads(out)
    by_path = {Path(e["path"]).relative_to(workdir / "images").as_posix(): e for e in entries}
    assert sorted(by_path) == sorted(GOOD + BAD)
    names = imagenet_class_names()
    for name in GOOD:
        topk = by_path[name]["topk"]
        assert len(topk) == 4 and "error" not in by_path[name]
        probs = [t["prob"] for t in topk]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert all(t["label"] == names[t["index"]] for t in topk)
    for name in BAD:
        assert "topk" not in by_path[name] and name.split("/")[-1] in by_path[name]["error"]


def test_predict_json_probabilities_match_model(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    photo = workdir / "images" / "china.jpg"
    rc, out, _ = predict(workdir, capsys, "--format", "json", "--topk", "2", str(photo))
    assert rc == 0
    model = effnet.create_model(MODEL, checkpoint_path=str(workdir / "weights.safetensors")).eval()
    cfg = resolve_model_data_config(model, args={"img_size": int(SIZE)})
    x = create_transform(**cfg)(load_image(photo)).unsqueeze(0)
    with torch.no_grad():
        p, i = model(x).softmax(-1)[0].topk(2)
    topk = json.loads(out)[0]["topk"]
    assert [t["index"] for t in topk] == i.tolist()
    assert [t["prob"] for t in topk] == pytest.approx(p.tolist(), abs=1e-5)


def test_predict_csv(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = predict(workdir, capsys, "--format", "csv", "--topk", "2", str(workdir / "images"))
    assert rc == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert set(rows[0]) == {"path", "rank", "index", "label", "prob", "error"}
    for name in GOOD:
        mine = [r for r in rows if r["path"] == str(workdir / "images" / name)]
        assert [r["rank"] for r in mine] == ["1", "2"] and all(not r["error"] for r in mine)
        assert float(mine[0]["prob"]) >= float(mine[1]["prob"])
    for name in BAD:
        (row,) = [r for r in rows if r["path"] == str(workdir / "images" / name)]
        assert row["error"] and not row["label"]


def test_embed_writes_pre_logits(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    output = workdir / "feats.npy"
    rc, out, err = cli(capsys, "embed", "--model", MODEL, "--checkpoint", str(workdir / "weights.safetensors"),
                       "--img-size", SIZE, "--batch-size", "4", str(workdir / "images"), "--output", str(output))
    assert rc == 1 and out == ""
    feats = np.load(output)
    paths = (workdir / "feats.paths.txt").read_text().splitlines()
    assert feats.dtype == np.float32 and feats.shape == (len(GOOD), 1280)
    assert sorted(paths) == sorted(str(workdir / "images" / n) for n in GOOD)
    for name in BAD:
        assert str(workdir / "images" / name) in err
    model = effnet.create_model(MODEL, checkpoint_path=str(workdir / "weights.safetensors")).eval()
    transform = create_transform(**resolve_model_data_config(model, args={"img_size": int(SIZE)}))
    x = torch.stack([transform(load_image(p)) for p in paths])
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    assert not list(workdir.glob(".feats*"))  # no temp files left behind


def test_all_good_exits_zero_and_missing_path_fails(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    good = [str(workdir / "images" / n) for n in GOOD[:2]]
    rc, out, err = predict(workdir, capsys, *good)
    assert rc == 0 and err == "" and all(p in out for p in good)
    rc, out, err = predict(workdir, capsys, good[0], str(workdir / "nope.jpg"))
    assert rc == 1 and good[0] in out and "nope.jpg: no such file" in err


def test_usage_errors_exit_2(workdir: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    rc, _, err = predict(workdir, capsys, str(tmp_path / "empty_dir"))
    assert rc == 2 and "no images found" in err
    photo = str(workdir / "images" / "china.jpg")
    rc, _, err = cli(capsys, "predict", "--model", "efficientnet_b9_pruned", "--checkpoint",
                     str(workdir / "weights.safetensors"), photo)
    assert rc == 2 and "unknown model 'efficientnet_b9_pruned'" in err
    rc, _, err = cli(capsys, "predict", "--model", MODEL, photo)
    assert rc == 2 and "--pretrained or --checkpoint" in err
    (tmp_path / "bad.pth").write_text("not weights")
    rc, _, err = cli(capsys, "predict", "--model", MODEL, "--checkpoint", str(tmp_path / "bad.pth"), photo)
    assert rc == 2 and "bad.pth" in err
    rc, _, err = predict(workdir, capsys, "--topk", "0", photo)
    assert rc == 2 and "--topk" in err
    if not torch.cuda.is_available():
        rc, _, err = predict(workdir, capsys, "--device", "cuda", photo)
        assert rc == 2 and "CUDA is not available" in err
    rc, _, err = cli(capsys, "embed", "--model", MODEL, "--checkpoint", str(workdir / "weights.safetensors"),
                     photo, "--output", str(tmp_path / "no_such_dir" / "f.npy"))
    assert rc == 2 and "no_such_dir" in err
    rc, _, err = cli(capsys, "embed", "--model", MODEL, "--checkpoint", str(workdir / "weights.safetensors"),
                     photo, "--output", str(tmp_path))
    assert rc == 2 and "is a folder" in err


def test_class_names_from_checkpoint_and_file(workdir: Path, capsys: pytest.CaptureFixture,
                                              tmp_path: Path) -> None:
    model = effnet.create_model(MODEL, num_classes=3)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "class_names": ["cat", "dog", "fish"]}, ckpt)
    photo = str(workdir / "images" / "flower.jpg")
    base = ["predict", "--model", MODEL, "--checkpoint", str(ckpt), "--img-size", "32", "--format", "json"]
    rc, out, _ = cli(capsys, *base, photo)
    topk = json.loads(out)[0]["topk"]
    assert rc == 0 and len(topk) == 3 and {t["label"] for t in topk} == {"cat", "dog", "fish"}
    assert all(t["label"] == ["cat", "dog", "fish"][t["index"]] for t in topk)
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    rc, out, _ = cli(capsys, *base, "--class-names", str(names), photo)
    assert rc == 0 and all(t["label"] == ["red", "green", "blue"][t["index"]] for t in json.loads(out)[0]["topk"])
    names.write_text("red\ngreen\n")
    rc, _, err = cli(capsys, *base, "--class-names", str(names), photo)
    assert rc == 2 and "lists 2 class names but the model has 3 outputs" in err
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    rc, out, _ = cli(capsys, "predict", "--model", MODEL, "--checkpoint", str(plain), "--img-size", "32",
                     "--format", "json", photo)
    assert rc == 0 and all(t["label"] == str(t["index"]) for t in json.loads(out)[0]["topk"])


def test_progress_bar_only_on_a_terminal(workdir: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("effnet.tools.predict.PROGRESS_MIN_IMAGES", 2)
    good = [str(workdir / "images" / n) for n in GOOD[:3]]
    rc, out, err = predict(workdir, capsys, "--batch-size", "1", *good)
    assert rc == 0 and "%|" not in err  # captured stderr is not a terminal: no tqdm bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = predict(workdir, capsys, "--batch-size", "1", *good)
    assert rc == 0 and "/3 [" in err and "%|" in err and "%|" not in out
