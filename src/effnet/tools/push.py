"""`effnet push RUN --repo ORG/NAME`: share a run folder on the Hugging Face hub with a model card.

The folder's config.json and model.safetensors are what timm and effnet load (`hf-hub:ORG/NAME`);
args.yaml, summary.csv, the plot and any prune/upcycle report go along so the card's figures can be
checked. Training checkpoints (*.pth.tar: optimizer state, pickled) stay behind unless asked for.
Everything goes up in one commit; nothing in the run folder is written or changed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from ..errors import EffnetError
from ..extras import require
from ..loading import registered_architecture

HELP = "upload a run folder to the Hugging Face hub with a model card (loadable as hf-hub:ORG/NAME)"

SHARED = ("config.json", "model.safetensors", "args.yaml", "summary.csv", "summary.png", "prune_report.json",
          "upcycle_report.json")
CHECKPOINTS = ("model_best.pth.tar", "last.pth.tar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by effnet train, finetune, prune or upcycle")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the hub model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (default: main)")
    p.add_argument("--commit-message", default="Upload effnet run", help="(default: %(default)s)")
    p.add_argument("--include-checkpoints", action="store_true",
                   help="also upload model_best.pth.tar and last.pth.tar (to resume or fine-tune elsewhere)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EffnetError(f"{path}: not a readable config.json ({e})") from None
    if not isinstance(data, dict):
        raise EffnetError(f"{path}: not a model config (holds a {type(data).__name__})")
    return data


def _read_args(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        import yaml
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - args.yaml only adds detail to the card
        return {}
    return data if isinstance(data, dict) else {}


def best_row(summary: Path) -> dict[str, str] | None:
    """The summary.csv row with the best validation top-1 (EMA's when it was better)."""
    if not summary.is_file():
        return None
    with summary.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def score(row: dict[str, str]) -> float:
        values = [row.get("eval_top1"), row.get("ema_top1")]
        return max((float(v) for v in values if v not in (None, "")), default=float("-inf"))
    return max(rows, key=score) if rows else None


def timm_loadable(meta: dict[str, Any]) -> bool:
    """Whether timm can build the folder's architecture: a registered name with its registered
    widths (pruned or upcycled architectures exist only in effnet)."""
    return registered_architecture(meta) is not None


def model_card(folder: Path, repo_id: str) -> str:
    """README.md for the hub repo: the model, the data, the metrics, and how to load it."""
    meta = _read_json(folder / "config.json")
    args = _read_args(folder / "args.yaml")
    pre = meta.get("pretrained_cfg") or {}
    arch = meta.get("architecture", "unknown")
    labels = meta.get("label_names") or meta.get("class_names") or []
    timm_ok = timm_loadable(meta)
    size = (pre.get("input_size") or [3, "?", "?"])[-1]
    lines = ["---", f"library_name: {'timm' if timm_ok else 'effnet'}", "pipeline_tag: image-classification",
             f"license: {pre.get('license') or 'apache-2.0'}", "tags: [image-classification, effnet"
             + (", timm" if timm_ok else "") + "]", "---", "", f"# {repo_id}", "",
             f"An `{arch}` image classifier with {meta.get('num_classes', '?')} classes, trained with effnet "
             "(EfficientNet-CondConv and knapsack-pruned EfficientNet for PyTorch).", "",
             "## Model", "", f"- architecture: `{arch}`"
             + ("" if timm_ok else " (custom widths or experts: effnet's `effnet_config` in config.json)"),
             f"- input: {size} px, crop {pre.get('crop_pct', '?')}, {pre.get('interpolation', '?')} resize, "
             f"mean {pre.get('mean')}, std {pre.get('std')}", ""]
    data = args.get("dataset") or (Path(str(args["data_dir"])).name if args.get("data_dir") else None)
    lines += ["## Data", "", f"- dataset: {data or 'not recorded'}"]
    if labels:
        shown = ", ".join(str(n) for n in labels[:20]) + (", ..." if len(labels) > 20 else "")
        lines.append(f"- classes ({len(labels)}): {shown}")
    if args.get("epochs"):
        lines.append(f"- epochs: {args['epochs']}, batch size {args.get('batch_size', '?')}, "
                     f"optimizer {args.get('opt', '?')}, seed {args.get('seed', '?')}")
    row = best_row(folder / "summary.csv")
    lines += ["", "## Metrics", ""]
    if row is None:
        lines.append("No summary.csv in the run folder.")
    else:
        lines += ["Validation at the best epoch (from summary.csv):", "", "| epoch | top-1 | top-5 | loss |",
                  "|---|---|---|---|",
                  f"| {int(row['epoch']) + 1} | {row.get('eval_top1')} | {row.get('eval_top5')} | "
                  f"{row.get('eval_loss')} |"]
        if row.get("ema_top1"):
            lines.append(f"| {int(row['epoch']) + 1} (EMA) | {row['ema_top1']} | {row.get('ema_top5')} | "
                         f"{row.get('ema_loss')} |")
    lines += ["", "## How to use", "", "With effnet (`pip install 'effnet[hub]'`):", "", "```bash",
              f"effnet predict -m hf-hub:{repo_id} image.jpg", "```", "", "```python", "import effnet",
              f"model = effnet.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
              "labels = model.pretrained_cfg.get('label_names')", "```", ""]
    if timm_ok:
        lines += ["With timm:", "", "```python", "import timm",
                  f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
                  "config = timm.data.resolve_data_config({}, model=model)",
                  "transform = timm.data.create_transform(**config)", "```", ""]
    return "\n".join(lines)


def files_to_push(folder: Path, include_checkpoints: bool = False) -> list[Path]:
    """The run folder's files that go to the hub, checking that it is a model folder."""
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise EffnetError(f"{folder} is not a model folder (no {' or '.join(missing)}); push a run folder "
                          f"written by effnet train, finetune, prune or upcycle")
    names = SHARED + (CHECKPOINTS if include_checkpoints else ())
    return [folder / n for n in names if (folder / n).is_file()]


def make_api() -> Any:
    """huggingface_hub's HfApi (the token comes from `hf auth login` or HF_TOKEN)."""
    hub = require("huggingface_hub", extra="hub", purpose="effnet push")
    from .. import __version__
    return hub.HfApi(library_name="effnet", library_version=__version__)


def push_folder(folder: str | Path, repo_id: str, *, api: Any = None, private: bool = False,
                revision: str | None = None, commit_message: str = "Upload effnet run",
                include_checkpoints: bool = False) -> Any:
    """Upload a run folder (and a model card, unless the folder has its own README.md) to `repo_id`
    in one commit; returns what `create_commit` returns (the commit info)."""
    hub = require("huggingface_hub", extra="hub", purpose="effnet push")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EffnetError(f"RUN {str(folder)!r} is not a folder")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise EffnetError(f"--repo {repo_id!r}: give ORG/NAME, e.g. my-name/digits-b1-pruned")
    files = files_to_push(folder, include_checkpoints)
    readme = folder / "README.md"
    card = readme.read_bytes() if readme.is_file() else model_card(folder, repo_id).encode("utf-8")
    api = api if api is not None else make_api()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [hub.CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in files]
    operations.append(hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    return api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision,
                             repo_type="model")


def run(args: argparse.Namespace) -> int:
    info = push_folder(args.run, args.repo, private=args.private, revision=args.revision,
                       commit_message=args.commit_message, include_checkpoints=args.include_checkpoints)
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{args.repo}"
    print(f"pushed {args.run} to {args.repo} ({url}); load it with --model hf-hub:{args.repo}")
    return 0
