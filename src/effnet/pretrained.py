"""Pretrained weights: finding the published file and fitting it to the model asked for."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import hub
from .checkpoint import load_weights, read_state_dict
from .config import ModelConfig
from .errors import PretrainedUnavailableError


def fetch_pretrained(cfg: ModelConfig) -> Path:
    """A local path to the variant's pretrained weights, fetching them if needed.

    Sources, in order: `pretrained.file` (a local file, set through pretrained_cfg_overlay);
    the Hugging Face hub repo `pretrained.hf_hub_id` (model.safetensors, then pytorch_model.bin,
    through huggingface_hub's cache); then `pretrained.url`, downloaded into torch's hub
    checkpoint folder and checked against the sha256 prefix in its name. Raises
    PretrainedUnavailableError listing every source tried and why it failed.
    """
    p = cfg.pretrained
    if p.file:
        path = Path(p.file).expanduser()
        if not path.is_file():
            raise PretrainedUnavailableError(
                f"pretrained weights for {cfg.name}: pretrained_cfg_overlay file {str(path)!r} "
                f"does not exist or is not a file")
        return path
    tried = ["file: not set (pretrained_cfg_overlay=dict(file=PATH))"]
    if p.hf_hub_id:
        found, failures = hub.hf_hub_weights(p.hf_hub_id)
        if found is not None:
            return found
        tried.append(f"Hugging Face hub {p.hf_hub_id}: " + "; ".join(failures))
    else:
        tried.append("Hugging Face hub: no hf_hub_id")
    if p.url:
        try:
            return hub.download_url(p.url)
        except hub.DownloadError as e:
            tried.append(f"url {p.url}: {e}")
    else:
        tried.append("url: not set")
    raise PretrainedUnavailableError(unavailable_message(cfg, tried))


def unavailable_message(cfg: ModelConfig, tried: list[str]) -> str:
    """Why no weights were found, the exact files effnet reads, how to fill them from a connected
    machine, and how to use a file the user already has (command line and Python)."""
    p = cfg.pretrained
    hf_cache = hub.hub_cache_dir()
    reads: list[str] = []
    fill: list[str] = []
    if p.hf_hub_id and hf_cache is not None:
        repo = hf_cache / f"models--{p.hf_hub_id.replace('/', '--')}" / "snapshots" / "REVISION"
        reads.append(f"{repo / hub.HF_FILENAMES[0]} (or {hub.HF_FILENAMES[1]}); the Hugging Face cache follows "
                     f"HF_HOME / HF_HUB_CACHE")
        fill.append(f"`hf download {p.hf_hub_id}` on a connected machine, then copy its "
                    f"models--{p.hf_hub_id.replace('/', '--')} folder into {hf_cache}")
    if p.url:
        target = hub.checkpoint_dir() / hub.url_filename(p.url)
        reads.append(f"{target} (the torch hub cache follows TORCH_HOME)")
        fill.append(f"download {p.url} and put it in {target.parent} under the name {target.name}")
    network = hub.hub_unreachable() if p.hf_hub_id and not hub.offline() else None
    state = ("HF_HUB_OFFLINE is set" if hub.offline() else f"no network: {network}" if network
             else "no source could deliver them")
    lines = [f"no pretrained weights for {cfg.name} in the local caches ({state}).", "Sources tried:",
             *(f"  - {t}" for t in tried), "Files effnet reads:", *(f"  - {r}" for r in reads)]
    if fill:
        lines += ["To fill the cache:", *(f"  - {f}" for f in fill)]
    lines.append(f"Or use weights you have: --checkpoint FILE or --model local-dir:DIR on the command line; "
                 f"from Python create_model({cfg.name!r}, checkpoint_path='FILE') or create_model({cfg.name!r}, "
                 f"pretrained=True, pretrained_cfg_overlay=dict(file='FILE')).")
    return "\n".join(lines)


def adapt_state_dict(state_dict: dict[str, Tensor], model: nn.Module, cfg: ModelConfig,
                     num_classes: int | None, in_chans: int) -> dict[str, Tensor]:
    """Fit published weights to a model with another class count or input channel count.

    A different class count keeps the model's freshly initialised classifier (with a warning);
    another channel count adapts the RGB stem: summed for 1 channel, repeated and rescaled for more.
    """
    sd = dict(state_dict)
    own = model.state_dict()
    if num_classes is not None and num_classes != cfg.pretrained.num_classes and "classifier.weight" in own:
        warnings.warn(f"{cfg.name}: num_classes={num_classes} differs from the pretrained "
                      f"{cfg.pretrained.num_classes}; the classifier is freshly initialised", stacklevel=3)
        for key in ("classifier.weight", "classifier.bias"):
            sd[key] = own[key]
    if num_classes == 0:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    stem = sd.get("conv_stem.weight")
    if stem is not None and in_chans != stem.shape[1]:
        sd["conv_stem.weight"] = adapt_input_conv(stem, in_chans)
    return sd


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """(O, 3, k, k) RGB kernel -> (O, in_chans, k, k) with the same response to a grey image."""
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_pretrained(model: nn.Module, cfg: ModelConfig, num_classes: int | None = None,
                    in_chans: int = 3) -> None:
    """Fetch the variant's published weights and load them into `model`."""
    path = fetch_pretrained(cfg)
    sd = adapt_state_dict(read_state_dict(path), model, cfg, num_classes, in_chans)
    with torch.no_grad():
        load_weights(model, sd, str(path))
