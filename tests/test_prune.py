"""Knapsack pruning: coupled groups, Taylor importance, knapsack optimality, exact slicing, MACs
(our counter against torch's), inner distillation, the Hugging Face-layout output."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import effnet
import effnet.layers
from effnet.config import ModelConfig
from effnet.flops import count_macs
from effnet.hf_dir import save_hf_dir
from effnet.prune import (InnerDistillationLoss, channel_groups, knapsack_dp, knapsack_greedy, layer_costs,
                          prune_model, select_channels, slice_model, taylor_importance)
from synthetic import synthetic_state_dict

SIZE = 32
INPUT = (3, SIZE, SIZE)
TINY = ModelConfig("tiny_dense", width_mult=0.25, depth_mult=0.6)
PRUNED_MODELS = ["efficientnet_b1_pruned", "efficientnet_b2_pruned", "efficientnet_b3_pruned"]


def with_weights(model: effnet.EfficientNet, seed: int = 0) -> effnet.EfficientNet:
    """Synthetic weights that keep activations O(1), so output comparisons mean something."""
    sd = synthetic_state_dict([(k, list(v.shape)) for k, v in model.state_dict().items()], seed)
    model.load_state_dict(sd)
    return model.eval()


def batches(n: int = 2, batch: int = 4, classes: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *INPUT, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def torch_macs(model: torch.nn.Module) -> int:
    """torch.utils.flop_counter's count (FLOPs = 2 x MACs) for one image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *INPUT))
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def tiny() -> effnet.EfficientNet:
    return with_weights(effnet.build_model(TINY, num_classes=5))


@pytest.mark.parametrize("name", PRUNED_MODELS + ["tf_efficientnet_cc_b0_4e"])
def test_layer_costs_sum_to_count_macs_and_torch_agrees(name: str) -> None:
    model = effnet.create_model(name, num_classes=10).eval()
    costs = layer_costs(model, channel_groups(model), INPUT)
    assert sum(c.macs for c in costs) == count_macs(model, INPUT) == torch_macs(model)


def test_groups_follow_the_architecture(tiny: effnet.EfficientNet) -> None:
    groups = {g.name: g for g in channel_groups(tiny)}
    specs = tiny.cfg.blocks()
    mids = [f"blocks.{b.stage}.{b.index}.mid" for b in specs if b.block == "ir"]
    stages = [f"stage{s}.out" for s in range(1, len(tiny.cfg.stages))]
    assert sorted(groups) == sorted(mids + stages)  # stem, first stage and head are not groups
    last = [b for b in specs if b.stage == 2][-1]
    assert groups["stage2.out"].size == last.out_chs
    keys = {m.key for m in groups["stage2.out"].members}
    for b in specs:
        if b.stage == 2:
            assert f"blocks.2.{b.index}.conv_pwl.weight" in keys and f"blocks.2.{b.index}.bn3.running_var" in keys
    assert "blocks.3.0.conv_pw.weight" in keys and "blocks.2.1.conv_pw.weight" in keys
    assert "conv_head.weight" in {m.key for m in groups[stages[-1]].members}


def test_knapsack_dp_matches_brute_force_and_greedy_is_feasible() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = 12
        values = rng.random(n)
        costs = rng.integers(1, 20, n).astype(float)
        if trial % 2:
            costs[: n // 2] = costs[0]  # a cost class shared by several items
        capacity = float(rng.integers(10, 80))
        best = max(sum(values[list(s)]) for r in range(n + 1) for s in itertools.combinations(range(n), r)
                   if sum(costs[list(s)]) <= capacity)
        chosen = knapsack_dp(values, costs, capacity, resolution=int(capacity))
        assert costs[chosen].sum() <= capacity
        assert values[chosen].sum() == pytest.approx(best)
        greedy = knapsack_greedy(values, costs, capacity)
        assert costs[greedy].sum() <= capacity and values[greedy].sum() <= best + 1e-12


def test_taylor_importance_is_zero_for_a_dead_channel(tiny: effnet.EfficientNet) -> None:
    groups = channel_groups(tiny)
    params = dict(tiny.named_parameters())
    mid = next(g for g in groups if g.name == "blocks.2.0.mid")
    with torch.no_grad():
        for m in mid.members:
            if m.key in params:
                t = params[m.key].view(m.bank) if m.bank else params[m.key]
                t.select(m.axis, 3).zero_()
    scores = taylor_importance(tiny, batches(), groups)
    assert set(scores) == {g.name for g in groups}
    assert all(scores[g.name].shape == (g.size,) and (scores[g.name] >= 0).all() for g in groups)
    assert scores["blocks.2.0.mid"][3] == 0 and scores["blocks.2.0.mid"].sum() > 0
    assert not any(p.grad is not None for p in tiny.parameters())


@pytest.mark.parametrize("name", ["tiny", "tf_efficientnet_cc_b0_4e"])
def test_ratio_one_keeps_everything_and_computes_the_same(name: str, tiny: effnet.EfficientNet) -> None:
    model = tiny if name == "tiny" else with_weights(effnet.create_model(name, num_classes=5))
    scores = taylor_importance(model, batches(1), channel_groups(model))
    small, sel = prune_model(model, scores, 1.0, input_size=INPUT, resolution=2000)
    assert sel.widths == sel.sizes and sel.macs == sel.base_macs
    assert small.cfg.blocks() == model.cfg.blocks()
    x = batches(1)[0][0]
    with torch.no_grad():
        assert torch.equal(small.eval()(x), model(x))


@pytest.mark.parametrize("name", ["tiny", "tf_efficientnet_cc_b0_4e"])
def test_slicing_is_the_sub_network(name: str, tiny: effnet.EfficientNet) -> None:
    """The sliced model equals the original with the dropped channels silenced."""
    model = tiny if name == "tiny" else with_weights(effnet.create_model(name, num_classes=5))
    groups = channel_groups(model)
    g = torch.Generator().manual_seed(1)
    keep = {gr.name: torch.randperm(gr.size, generator=g)[: max(1, gr.size * 2 // 3)].sort().values
            for gr in groups}
    small = slice_model(model, keep).eval()
    sd = model.state_dict()
    # kept weights are copied: the expand conv's rows, every expert the same way
    key = "blocks.5.1.conv_pw.weight"
    mid, out = keep["blocks.5.1.mid"], keep["stage5.out"]
    conv = model.get_submodule("blocks.5.1.conv_pw")
    sliced = small.state_dict()[key]
    if isinstance(conv, effnet.layers.CondConv2d):
        bank = sd[key].view(conv.experts, *conv.weight_shape)
        assert torch.equal(sliced.view(conv.experts, len(mid), len(out), 1, 1), bank[:, mid][:, :, out])
    else:
        assert torch.equal(sliced, sd[key][mid][:, out])
    # silence dropped channels in a copy of the original: their outputs then contribute nothing
    silenced = with_weights(effnet.build_model(model.cfg, num_classes=5))
    silenced.load_state_dict(sd)
    state = silenced.state_dict()
    with torch.no_grad():
        for gr in groups:
            drop = torch.ones(gr.size, dtype=torch.bool)
            drop[keep[gr.name]] = False
            for m in gr.members:
                is_producer_bn = m.key.split(".")[-2] == "bn3" and m.key.split(".")[-1] in ("weight", "bias")
                is_reader = (gr.kind == "mid" and (m.key.endswith("conv_pwl.weight")
                                                   or m.key.endswith("conv_reduce.weight")))
                if is_producer_bn or is_reader:
                    t = state[m.key].view(m.bank) if m.bank else state[m.key]
                    t.index_fill_(m.axis, torch.nonzero(drop).flatten(), 0.0)
    x = batches(1)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(small(x), silenced.eval()(x), rtol=1e-4, atol=1e-5)
    assert small.cfg.pruned.stage_out[1:] == tuple(len(keep[f"stage{s}.out"]) for s in range(1, 7))


@pytest.mark.parametrize("method", ["dp", "greedy"])
def test_prune_to_half_fits_the_budget_on_both_counters(method: str) -> None:
    model = with_weights(effnet.create_model("efficientnet_b1_pruned", num_classes=5))
    scores = taylor_importance(model, batches(1), channel_groups(model))
    small, sel = prune_model(model, scores, 0.5, input_size=INPUT, method=method, resolution=2000)
    macs = count_macs(small, INPUT)
    assert macs == sel.macs == torch_macs(small)
    assert macs <= 0.5 * count_macs(model, INPUT)
    assert macs >= 0.45 * count_macs(model, INPUT)  # the budget is used, not wasted
    assert 0 < sel.value_kept < 1
    blocks = small.cfg.blocks()
    assert [b.stride == 1 and b.in_chs == b.out_chs for b in blocks] == \
        [b.stride == 1 and b.in_chs == b.out_chs for b in model.cfg.blocks()]


def test_select_rejects_a_bad_ratio(tiny: effnet.EfficientNet) -> None:
    scores = {g.name: torch.ones(g.size) for g in channel_groups(tiny)}
    with pytest.raises(ValueError, match="ratio"):
        select_channels(tiny, scores, 1.5, input_size=INPUT, resolution=2000)


def test_pruned_output_loads_with_local_dir(tmp_path, tiny: effnet.EfficientNet) -> None:
    scores = taylor_importance(tiny, batches(1), channel_groups(tiny))
    small, sel = prune_model(tiny, scores, 0.5, input_size=INPUT, name="tiny_knapsack_50", resolution=2000)
    save_hf_dir(small, tmp_path / "out", class_names=list("abcde"))
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["architecture"] == "tiny_knapsack_50" and meta["num_classes"] == 5
    assert meta["label_names"] == list("abcde") and meta["num_features"] == small.num_features
    pruned = meta["effnet_config"]["pruned"]
    assert [list(b) for b in zip(pruned["stage_out"], pruned["blocks"])]  # the shipped variants' format
    assert tuple(pruned["stage_out"]) == small.cfg.pruned.stage_out
    loaded = effnet.create_model(f"local-dir:{tmp_path / 'out'}").eval()
    x = batches(1)[0][0]
    with torch.no_grad():
        assert torch.equal(loaded(x), small.eval()(x))
    assert count_macs(loaded, INPUT) == sel.macs


def test_inner_distillation_loss(tiny: effnet.EfficientNet) -> None:
    scores = taylor_importance(tiny, batches(1), channel_groups(tiny))
    student, sel = prune_model(tiny, scores, 0.5, input_size=INPUT, resolution=2000)
    crit = InnerDistillationLoss(student, tiny, weight=2.0, keep=sel.keep)
    assert len(crit.projections) > 0
    proj = crit.projections["blocks_2_0"]
    keep = sel.keep["stage2.out"]
    assert torch.equal(proj.weight[keep, torch.arange(len(keep)), 0, 0], torch.ones(len(keep)))
    x, y = batches(1)[0]
    student.train()
    out = student(x)
    ce = torch.nn.functional.cross_entropy(out, y)
    loss = crit(out, y)
    assert loss > ce and crit.last_feature_loss > 0
    assert loss.item() == pytest.approx(ce.item() + 2.0 * crit.last_feature_loss, rel=1e-5)
    loss.backward()
    assert proj.weight.grad is not None and student.conv_stem.weight.grad is not None
    assert all(p.grad is None for p in tiny.parameters())  # the teacher is frozen
    with torch.no_grad():
        out = student.eval()(x)
        assert torch.equal(crit(out, y), torch.nn.functional.cross_entropy(out, y))  # eval: labels only
    crit.detach_hooks()


def image_folder(root, classes: int = 3, per_class: int = 8) -> str:
    """train/ and val/ class folders of small random images, each class with its own tint."""
    from PIL import Image
    g = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = g.integers(0, 80, (20, 20, 3)) + np.array([60 * c, 0, 120 - 60 * c])
                Image.fromarray(pixels.astype(np.uint8)).save(d / f"{i}.png")
    return str(root)


def test_prune_command_writes_a_loadable_folder_within_budget(tmp_path, tiny: effnet.EfficientNet) -> None:
    from effnet.cli import main
    data = image_folder(tmp_path / "data")
    save_hf_dir(with_weights(effnet.build_model(TINY, num_classes=3)), tmp_path / "trained")
    out = tmp_path / "pruned"
    code = main(["prune", "--model", f"local-dir:{tmp_path / 'trained'}", "--data-dir", data, "--img-size", "32",
                 "--batch-size", "6", "--workers", "0", "--calib-batches", "2", "--epochs", "1",
                 "--macs-ratio", "0.5", "--distill-weight", "1.0", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["macs"]["pruned"] == report["macs"]["torch_pruned"] <= 0.5 * report["macs"]["original"]
    assert report["macs"]["original"] == report["macs"]["torch_original"]
    assert set(report["top1"]) == {"original", "sliced", "fine_tuned"}
    assert (out / "train" / "last.pth.tar").is_file()
    loaded = effnet.create_model(f"local-dir:{out}").eval()
    assert loaded.num_classes == 3 and loaded.pretrained_cfg["input_size"] == (3, 32, 32)
    assert count_macs(loaded) == report["macs"]["pruned"]
    assert json.loads((out / "config.json").read_text())["label_names"] == ["class0", "class1", "class2"]


def test_prune_command_errors_are_one_line(tmp_path, capsys) -> None:
    from effnet.cli import main
    data = image_folder(tmp_path / "data")
    model = effnet.create_model("efficientnet_b1_pruned", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "seven.pth")
    args = ["prune", "--model", "efficientnet_b1_pruned", "--data-dir", data, "--img-size", "32",
            "--batch-size", "4", "--workers", "0", "--output", str(tmp_path / "o")]
    assert main(args + ["--checkpoint", str(tmp_path / "seven.pth"), "--macs-ratio", "0.5"]) == 2
    assert "has 7 classes but the data has 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # refused as the flags are parsed
        main(args + ["--macs-ratio", "1.5"])
    assert usage.value.code == 2
    assert "--macs-ratio: must be in (0, 1]" in capsys.readouterr().err


# --- latency budget ---------------------------------------------------------------------------------


def test_latency_cost_table_is_positive_and_grows_with_width(tiny: effnet.EfficientNet) -> None:
    from effnet.prune import measure_latency_model
    # batch 16: at smaller batches the tiny model's time is mostly per-layer overhead, and noise swamps widths
    lat = measure_latency_model(tiny, INPUT, batch_size=16, dtype="fp32", rounds=5)
    groups = {g.name: g.size for g in channel_groups(tiny)}
    assert lat.sizes == groups and set(lat.unit) == set(groups) and lat.base_ms > 0
    assert all(u > 0 for u in lat.unit.values())
    for g, rows in lat.table.items():
        widths = [w for w, _ in rows]
        assert widths == sorted(widths) and widths[-1] == groups[g] and len(rows) == 4
        assert all(ms > 0 for _, ms in rows)
    assert lat.predict(dict(groups)) == pytest.approx(lat.base_ms)


def test_knapsack_respects_the_latency_budget_by_its_cost_model(tiny: effnet.EfficientNet) -> None:
    from effnet.prune import LatencyModel, select_channels_latency
    from effnet.prune.latency import min_latency
    sizes = {g.name: g.size for g in channel_groups(tiny)}
    rng = np.random.default_rng(0)
    unit = {g: float(rng.uniform(0.001, 0.05)) for g in sizes}  # ms per channel, uneven as measured ones are
    base = 2.0 + sum(unit[g] * n for g, n in sizes.items())  # 2 ms the stem, first stage and head take
    lat = LatencyModel(unit, sizes, base_ms=base, batch_size=1, dtype="fp32", threads=1)
    scores = {g: torch.from_numpy(rng.random(n)) for g, n in sizes.items()}
    floor = min_latency(lat, tiny)
    kept = []
    for frac in (0.3, 0.6, 0.9):
        target = floor + frac * (lat.base_ms - floor)
        sel = select_channels_latency(tiny, scores, target, lat, input_size=INPUT)
        assert sel.budget == "latency" and sel.predicted_ms == pytest.approx(lat.predict(sel.widths))
        assert sel.predicted_ms <= target + 1e-9
        assert {g: len(k) for g, k in sel.keep.items()} == sel.widths
        kept.append(sel.value_kept)
    assert kept == sorted(kept) and kept[0] < kept[-1]
    with pytest.raises(ValueError, match="below what pruning can reach"):
        select_channels_latency(tiny, scores, 0.5 * floor, lat, input_size=INPUT)


def run_folder(root, model: effnet.EfficientNet) -> str:
    """A training run's folder: config.json and model.safetensors, and a model_best.pth.tar with its args."""
    model.pretrained_cfg.update(input_size=(3, SIZE, SIZE), crop_pct=1.0)
    save_hf_dir(model, root)
    torch.save({"state_dict": model.state_dict(), "args": {"model": "tiny_dense", "img_size": SIZE}},
               root / "model_best.pth.tar")
    return str(root / "model_best.pth.tar")


@pytest.mark.slow  # about 20 s alone, twice that on a busy 2-core machine: it times and fine-tunes
def test_prune_to_a_latency_budget_from_a_run_checkpoint(tmp_path, capsys) -> None:
    from effnet.cli import main
    data = image_folder(tmp_path / "data")
    (tmp_path / "data" / "val" / "class0" / "broken.png").write_bytes(b"not an image")
    checkpoint = run_folder(tmp_path / "run", with_weights(effnet.build_model(TINY, num_classes=3)))
    out = tmp_path / "pruned"
    code = main(["prune", "--checkpoint", checkpoint, "--data-dir", data, "--batch-size", "6", "--workers", "0",
                 "--calib-batches", "2", "--epochs", "1", "--budget", "latency", "--target-ratio", "0.97",
                 "--output", str(out)])  # model, input size and crop all come from the run
    assert code == 0
    text = capsys.readouterr().out
    assert "unreadable images: " in text and "1 per validation pass" in text
    report = json.loads((out / "prune_report.json").read_text())
    assert report["budget"] == "latency" and report["input_size"] == [3, SIZE, SIZE]
    assert report["unreadable_images"]["validation_pass"] == 1
    lat = report["latency"]
    assert lat["predicted_ms"] <= report["target_ms"] + 1e-9
    assert report["target_ms"] == pytest.approx(0.97 * lat["cost_model"]["base_ms"])
    assert lat["measured_ms"]["pruned"] > 0 and lat["measured_ms"]["unpruned"] > 0
    assert f"pruned {lat['measured_ms']['pruned']:.3f} ms measured" in text
    assert report["macs"]["pruned"] < report["macs"]["original"]
    assert effnet.create_model(f"local-dir:{out}").num_classes == 3


@pytest.mark.parametrize("flags, message", [
    (["--budget", "latency", "--target-ms", "-5"], "--target-ms: must be > 0"),
    (["--budget", "latency", "--target-ratio", "0"], "--target-ratio: must be in (0, 1]"),
    (["--budget", "latency", "--target-ratio", "1.5"], "--target-ratio: must be in (0, 1]"),
    (["--latency-batch", "0", "--macs-ratio", "0.5"], "--latency-batch: must be"),
])
def test_bad_latency_flags_are_refused_as_parsed(tmp_path, capsys, flags: list[str], message: str) -> None:
    from effnet.cli import main
    with pytest.raises(SystemExit) as usage:
        main(["prune", "--model", "efficientnet_b1_pruned", "--dataset", "digits", "--output", str(tmp_path / "o"),
              *flags])
    assert usage.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--target-ms", "5", "--macs-ratio", "0.5"], "--target-ms is a latency budget"),
    (["--budget", "latency"], "--budget latency needs one of --target-ms MS or --target-ratio R"),
    (["--budget", "latency", "--target-ms", "5", "--target-ratio", "0.5"], "needs one of --target-ms"),
    (["--budget", "latency", "--macs-ratio", "0.5"], "--macs-ratio is a MACs budget"),
    ([], "--budget macs needs --macs-ratio R"),
])
def test_conflicting_budget_flags_get_one_line_errors(tmp_path, capsys, flags: list[str], message: str) -> None:
    from effnet.cli import main
    code = main(["prune", "--model", "efficientnet_b1_pruned", "--dataset", "digits", "--output",
                 str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
