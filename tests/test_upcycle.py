"""Upcycling a dense EfficientNet into CondConv: equal outputs at initialisation, experts that can
diverge, training, and loading the result with local-dir:."""

from __future__ import annotations

import json

import pytest
import torch

import effnet
from effnet.config import ModelConfig
from effnet.hf_dir import save_hf_dir
from effnet.layers import CondConv2d
from effnet.upcycle import upcycle
from synthetic import synthetic_state_dict

SIZE = 32
TINY = ModelConfig("tiny_dense", width_mult=0.25, depth_mult=0.6)


def with_weights(model: effnet.EfficientNet) -> effnet.EfficientNet:
    model.load_state_dict(synthetic_state_dict([(k, list(v.shape)) for k, v in model.state_dict().items()]))
    return model.eval()


@pytest.mark.parametrize("source", ["tiny", "efficientnet_b1_pruned"])
@pytest.mark.parametrize("experts", [2, 4])
def test_upcycled_outputs_equal_the_dense_model(source: str, experts: int) -> None:
    dense = with_weights(effnet.build_model(TINY, num_classes=6) if source == "tiny"
                         else effnet.create_model(source, num_classes=6))
    twin = upcycle(dense, experts).eval()
    assert twin.cfg.experts == experts and twin.cfg.pruned == dense.cfg.pruned
    convs = [m for m in twin.modules() if isinstance(m, CondConv2d)]
    assert convs and all(c.experts == experts for c in convs)
    x = torch.randn(3, 3, SIZE, SIZE + 8)
    with torch.no_grad():
        ref, out = dense(x), twin(x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        assert ref.abs().max() > 0.1  # the comparison is not between near-zero outputs
        feats = twin.forward_features(x)
        torch.testing.assert_close(feats, dense.forward_features(x), rtol=0, atol=1e-5)


def test_experts_start_different_and_routing_learns() -> None:
    dense = with_weights(effnet.build_model(TINY, num_classes=6))
    twin = upcycle(dense, 4).train()
    name, conv = next((n, m) for n, m in twin.named_modules() if isinstance(m, CondConv2d))
    assert not torch.equal(conv.weight[0], conv.weight[1])  # symmetry broken ...
    mixed = (0.5 * conv.weight).sum(0)  # ... without changing the kernel that routing 0.5 mixes
    torch.testing.assert_close(mixed, dense.state_dict()[f"{name}.weight"].flatten(), rtol=0, atol=1e-6)
    routing = next(m.routing_fn for m in twin.modules() if getattr(m, "routing_fn", None) is not None)
    assert not routing.weight.any() and not routing.bias.any()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 6, (8,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        opt.step()
    assert routing.weight.abs().sum() > 0
    assert not torch.allclose(routing.weight[0], routing.weight[1])  # experts are routed differently


def test_upcycle_rejects_condconv_and_bad_expert_counts() -> None:
    with pytest.raises(ValueError, match="already a CondConv"):
        upcycle(effnet.create_model("tf_efficientnet_cc_b0_4e", num_classes=3), 4)
    with pytest.raises(ValueError, match="at least 2"):
        upcycle(effnet.build_model(TINY, num_classes=3), 1)


def test_upcycled_model_loads_with_local_dir(tmp_path) -> None:
    dense = with_weights(effnet.build_model(TINY, num_classes=6))
    twin = upcycle(dense, 4).eval()
    save_hf_dir(twin, tmp_path / "cc")
    meta = json.loads((tmp_path / "cc" / "config.json").read_text())
    assert meta["effnet_config"]["experts"] == 4 and meta["num_classes"] == 6 and "label_names" not in meta
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == ["config.json", "model.safetensors"]
    loaded = effnet.create_model(f"local-dir:{tmp_path / 'cc'}").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), twin(x))


def test_upcycle_command_without_and_with_training(tmp_path, capsys) -> None:
    from effnet.cli import main
    from test_prune import image_folder
    data = image_folder(tmp_path / "data")
    save_hf_dir(with_weights(effnet.build_model(TINY, num_classes=3)), tmp_path / "dense")
    dense = effnet.create_model(f"local-dir:{tmp_path / 'dense'}").eval()
    assert main(["upcycle", "--model", f"local-dir:{tmp_path / 'dense'}", "--experts", "4", "--img-size", "32",
                 "--output", str(tmp_path / "cc0")]) == 0
    report = json.loads((tmp_path / "cc0" / "upcycle_report.json").read_text())
    assert report["max_abs_diff_at_init"] < 1e-5 and report["epochs"] == 0
    twin = effnet.create_model(f"local-dir:{tmp_path / 'cc0'}").eval()
    assert twin.cfg.experts == 4 and twin.num_classes == 3
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), dense(x), rtol=0, atol=1e-5)
    assert main(["upcycle", "--model", f"local-dir:{tmp_path / 'dense'}", "--experts", "2", "--data-dir", data,
                 "--img-size", "32", "--batch-size", "6", "--workers", "0", "--epochs", "1",
                 "--output", str(tmp_path / "cc1")]) == 0
    report = json.loads((tmp_path / "cc1" / "upcycle_report.json").read_text())
    assert {"top1_dense", "top1_at_init", "top1_fine_tuned"} <= set(report)
    assert report["top1_dense"] == report["top1_at_init"]
    trained = effnet.create_model(f"local-dir:{tmp_path / 'cc1'}")
    assert not torch.equal(trained.state_dict()["blocks.4.0.routing_fn.weight"],
                           torch.zeros_like(trained.state_dict()["blocks.4.0.routing_fn.weight"]))
    capsys.readouterr()
    assert main(["upcycle", "--model", "tf_efficientnet_cc_b0_4e", "--num-classes", "3", "--experts", "4",
                 "--random-weights",
                 "--output", str(tmp_path / "bad")]) == 2
    assert "already has CondConv layers" in capsys.readouterr().err


def test_upcycle_takes_a_model_as_every_command_does(tmp_path, offline_hub, one_thread) -> None:
    """--checkpoint RUN/model_best.pth.tar alone, local-dir:, a run folder with a flag overriding its size,
    a tagged published name and hf-hub: (the latter two from an offline hub cache)."""
    from effnet.cli import main
    from effnet.loading import load_model
    from hub_cache import synthetic_weights, write_hub_cache
    from train_fixtures import fake_run
    run = fake_run(tmp_path / "run", "efficientnet_b1_pruned", ["cat", "dog", "fish"], img_size=32)
    write_hub_cache(offline_hub["hf"], "timm/efficientnet_b1_pruned.in1k", synthetic_weights("efficientnet_b1_pruned"))
    hub = write_hub_cache(offline_hub["hf"], "me/pets", load_model(str(run), device="cpu").model.state_dict())
    (hub.parent / "config.json").write_text((run / "config.json").read_text())
    cases = {"ckpt": (["--checkpoint", str(run / "model_best.pth.tar")], 32, 3),
             "dir": (["--model", f"local-dir:{run}"], 32, 3),
             "dir48": (["--model", str(run), "--img-size", "48"], 48, 3),
             "tagged": (["--model", "efficientnet_b1_pruned.in1k", "--pretrained"], 240, 1000),
             "hub": (["--model", "hf-hub:me/pets"], 32, 3)}
    for name, (argv, size, classes) in cases.items():
        out = tmp_path / name
        assert main(["upcycle", *argv, "--experts", "2", "--output", str(out)]) == 0, name
        meta = json.loads((out / "config.json").read_text())
        report = json.loads((out / "upcycle_report.json").read_text())
        assert meta["effnet_config"]["experts"] == 2 and meta["num_classes"] == classes, name
        assert meta["pretrained_cfg"]["input_size"] == [3, size, size] == report["input_size"], name
        assert len(meta["label_names"]) == classes, name
        if classes == 3:  # the run's classes and normalisation travel with the twin
            assert meta["label_names"] == ["cat", "dog", "fish"] and meta["pretrained_cfg"]["mean"] == [0.5] * 3
        assert report["rel_diff_at_init"] < 1e-4, name
    twin, dense = load_model(str(tmp_path / "ckpt"), device="cpu"), load_model(str(run), device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin.model(x), dense.model(x), rtol=0, atol=1e-5)
    assert main(["upcycle", "--checkpoint", str(tmp_path / "absent.pth.tar"), "--experts", "2", "--output",
                 str(tmp_path / "x")]) == 2
