"""Routing statistics: per-class mean routing weights, the heatmap PNG and its JSON."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import effnet
from effnet.errors import EffnetError
from effnet.routing import condconv_blocks, plot_routing, routing_statistics

SIZE = 32


def labelled(n: int = 3, batch: int = 4, classes: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> effnet.EfficientNet:
    m = effnet.create_model("tf_efficientnet_cc_b0_4e", num_classes=5).eval()
    with torch.no_grad():
        for _, block in condconv_blocks(m):
            block.routing_fn.bias.normal_(0, 1.0)  # distinct routing per block and expert
    return m


def test_statistics_are_per_class_means(model: effnet.EfficientNet) -> None:
    data = labelled()
    stats = routing_statistics(model, data, 5, class_names=list("abcde"))
    blocks = condconv_blocks(model)
    assert stats["blocks"] == [n for n, _ in blocks] and stats["experts"] == 4
    labels = torch.cat([y for _, y in data])
    present = sorted(set(labels.tolist()))
    assert stats["classes"] == ["abcde"[c] for c in present]
    assert stats["counts"] == [int((labels == c).sum()) for c in present]
    # recompute one block's per-class mean directly
    name, block = blocks[2]
    captured = []
    handle = block.register_forward_pre_hook(lambda m, args: captured.append(m.routing(args[0])))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    r = torch.cat(captured).double()
    expected = torch.stack([r[labels == c].mean(0) for c in present])
    torch.testing.assert_close(torch.tensor(stats["mean"][2], dtype=torch.float64), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(stats["overall"][2], dtype=torch.float64), r.mean(0),
                               rtol=1e-6, atol=1e-7)


def test_plot_writes_a_png_and_a_consistent_json(tmp_path, model: effnet.EfficientNet) -> None:
    stats = routing_statistics(model, labelled(), 5)
    png, js = plot_routing(stats, tmp_path / "routing.png", title="test")
    assert png == tmp_path / "routing.png" and js == tmp_path / "routing.json"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    data = json.loads(js.read_text())
    mean = torch.tensor(data["mean"])
    assert mean.shape == (len(data["blocks"]), len(data["classes"]), data["experts"])
    assert ((mean > 0) & (mean < 1)).all()
    assert len(data["counts"]) == len(data["classes"]) and sum(data["counts"]) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routing.json", "routing.png"]


def test_dense_model_and_bad_labels_are_clear_errors(model: effnet.EfficientNet) -> None:
    with pytest.raises(EffnetError, match="no CondConv blocks"):
        routing_statistics(effnet.create_model("efficientnet_b1_pruned", num_classes=5), labelled(1), 5)
    with pytest.raises(EffnetError, match=r"class indices in \[0, 3\)"):
        routing_statistics(model, labelled(1), 3)


def test_routing_command(tmp_path, model: effnet.EfficientNet, capsys) -> None:
    from effnet.cli import main
    from effnet.hf_dir import save_hf_dir
    from test_prune import image_folder
    data = image_folder(tmp_path / "data")
    m = effnet.create_model("tf_efficientnet_cc_b0_4e", num_classes=3)
    torch.save(m.state_dict(), tmp_path / "cc.pth")
    out = tmp_path / "plots" / "routing.png"
    out.parent.mkdir()
    assert main(["routing", "--model", "tf_efficientnet_cc_b0_4e", "--checkpoint", str(tmp_path / "cc.pth"),
                 "--data-dir", data, "--img-size", "32", "--batch-size", "4", "--output", str(out)]) == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["classes"] == ["class0", "class1", "class2"] and sum(stats["counts"]) == 12
    assert torch.tensor(stats["mean"]).shape == (len(stats["blocks"]), 3, 4)
    with Image.open(out) as im:
        assert im.format == "PNG"
    capsys.readouterr()
    save_hf_dir(effnet.create_model("efficientnet_b1_pruned", num_classes=3), tmp_path / "dense")
    assert main(["routing", "--model", f"local-dir:{tmp_path / 'dense'}", "--data-dir", data,
                 "--output", str(tmp_path / "r.png")]) == 2
    assert "no CondConv layers" in capsys.readouterr().err


def test_routing_takes_a_model_as_every_command_does_and_counts_unreadable_images(
        tmp_path, offline_hub, one_thread, capsys) -> None:
    """--checkpoint RUN/model_best.pth.tar alone (the run's size), local-dir: with --img-size overriding it,
    a tagged published name and hf-hub:; an unreadable image is left out and reported in one line."""
    from effnet.cli import main
    from hub_cache import synthetic_weights, write_hub_cache
    from train_fixtures import fake_run, make_image_folder
    name = "tf_efficientnet_cc_b0_4e"
    run = fake_run(tmp_path / "run", name, ["class0", "class1", "class2"], img_size=32)
    data = make_image_folder(tmp_path / "data", classes=3, per_class=1, val_per_class=2)
    write_hub_cache(offline_hub["hf"], f"timm/{name}.in1k", synthetic_weights(name))
    hub = write_hub_cache(offline_hub["hf"], "me/cc", effnet.create_model(f"local-dir:{run}").state_dict())
    (hub.parent / "config.json").write_text((run / "config.json").read_text())
    cases = {"ckpt": (["--checkpoint", str(run / "model_best.pth.tar")], 32),
             "dir40": (["--model", f"local-dir:{run}", "--img-size", "40"], 40),
             "tagged": (["-m", f"{name}.in1k", "--pretrained", "--img-size", "32"], 32),
             "hub": (["-m", "hf-hub:me/cc"], 32)}
    for case, (argv, size) in cases.items():
        out = tmp_path / f"{case}.png"
        assert main(["routing", *argv, "--data-dir", str(data), "--output", str(out)]) == 0, case
        stats = json.loads(out.with_suffix(".json").read_text())
        assert stats["img_size"] == size and stats["skipped"] == 0 and sum(stats["counts"]) == 6, case
        assert stats["classes"] == ["class0", "class1", "class2"] and stats["experts"] == 4, case
    capsys.readouterr()
    (data / "val" / "class1" / "1.png").write_bytes(b"not an image")
    out = tmp_path / "bad.png"
    assert main(["routing", "--checkpoint", str(run / "model_best.pth.tar"), "--data-dir", str(data),
                 "--output", str(out)]) == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["skipped"] == 1 and stats["counts"] == [2, 1, 2]
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "skipped" in line] == [
        "effnet routing: val: skipped 1 unreadable image (left out of every mean, not replaced)"]
    assert "Traceback" not in err
