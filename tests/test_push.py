"""Sharing: `effnet push` against a fake hub API (no network), and hubconf.py through torch.hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import effnet
from effnet.cli import main
from effnet.hf_dir import save_hf_dir
from effnet.tools import push
from hub_cache import synthetic_weights, write_hub_cache

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_b1_pruned"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only contends for the cores


class FakeApi:
    """Records what push asks of huggingface_hub's HfApi."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, **kw: Any) -> str:
        self.calls.append(("create_repo", dict(kw, repo_id=repo_id)))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id: str, operations: list[Any], **kw: Any) -> Any:
        files = {}
        for op in operations:
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
        self.calls.append(("create_commit", dict(kw, repo_id=repo_id, files=files)))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder as effnet train leaves it (weights random; the figures made up)."""
    folder = save_hf_dir(effnet.create_model(MODEL, num_classes=3), tmp_path / "run", class_names=["a", "b", "c"],
                         pretrained_overlay=dict(input_size=(3, 32, 32), url=None, hf_hub_id=None))
    (folder / "args.yaml").write_text("model: efficientnet_b1_pruned\ndataset: digits\nepochs: 5\nbatch_size: 64\n"
                                      "opt: sgd\nseed: 42\n")
    (folder / "summary.csv").write_text("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr,img/s\n"
                                        "0,2.1,1.9,40.5,90,0.1,100\n1,1.2,0.8,93.25,99.5,0.05,100\n"
                                        "2,1.1,0.9,91,99,0.01,100\n")
    (folder / "model_best.pth.tar").write_bytes(b"not pushed by default")
    return folder


def test_push_uploads_the_model_folder_with_a_card(run_dir: Path) -> None:
    api = FakeApi()
    push.push_folder(run_dir, "me/digits", api=api)
    (name, repo), (_, commit) = api.calls
    assert name == "create_repo" and repo["repo_id"] == "me/digits" and repo["exist_ok"] and not repo["private"]
    files = commit["files"]
    assert sorted(files) == ["README.md", "args.yaml", "config.json", "model.safetensors", "summary.csv"]
    assert files["model.safetensors"] == (run_dir / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "library_name: timm" in card and "`efficientnet_b1_pruned`" in card and "32 px" in card
    assert "| 2 | 93.25 | 99.5 | 0.8 |" in card  # the best epoch of summary.csv, counted from 1
    assert "dataset: digits" in card and "classes (3): a, b, c" in card
    assert "effnet predict -m hf-hub:me/digits" in card and "timm.create_model('hf-hub:me/digits'" in card
    assert not (run_dir / "README.md").exists()  # nothing written into the run


def test_push_options_and_refusals(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "README.md").write_text("# my own card\n")
    api = FakeApi()
    push.push_folder(run_dir, "me/digits", api=api, private=True, include_checkpoints=True, revision="dev")
    commit = api.calls[1][1]
    assert api.calls[0][1]["private"] and commit["revision"] == "dev"
    assert commit["files"]["README.md"] == b"# my own card\n" and "model_best.pth.tar" in commit["files"]
    with pytest.raises(effnet.EffnetError, match="not a model folder"):
        push.push_folder(tmp_path, "me/x", api=FakeApi())
    with pytest.raises(effnet.EffnetError, match="ORG/NAME"):
        push.push_folder(run_dir, "no-slash", api=FakeApi())


def test_card_of_an_effnet_only_architecture(run_dir: Path) -> None:
    from effnet.upcycle import upcycle
    twin = upcycle(effnet.create_model(MODEL, num_classes=3).eval(), 2)
    save_hf_dir(twin, run_dir, class_names=["a", "b", "c"])
    card = push.model_card(run_dir, "me/cc")
    assert "library_name: effnet" in card and "timm.create_model" not in card


def test_push_command(run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    api = FakeApi()
    monkeypatch.setattr(push, "make_api", lambda: api)
    assert main(["push", str(run_dir), "--repo", "me/digits"]) == 0
    assert "hf-hub:me/digits" in capsys.readouterr().out and len(api.calls) == 2
    assert main(["push", str(run_dir.parent), "--repo", "me/digits"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_torch_hub_load_from_a_checkout(offline_hub: dict[str, Path]) -> None:
    weights = synthetic_weights(MODEL)
    write_hub_cache(offline_hub["hf"], f"timm/{MODEL}.in1k", weights)
    model = torch.hub.load(str(REPO_ROOT), MODEL, source="local", pretrained=True)
    assert isinstance(model, effnet.EfficientNet) and torch.equal(model.state_dict()["conv_stem.weight"],
                                                                   weights["conv_stem.weight"])
    small = torch.hub.load(str(REPO_ROOT), "tf_efficientnet_cc_b0_4e", source="local", num_classes=5)
    assert small.num_classes == 5
