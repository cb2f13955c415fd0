"""Writes tests/fixtures/parity/<model>.safetensors: the reference implementation's outputs on
deterministic synthetic weights, and copies the checkpoint manifests into tests/fixtures/reference.

Run with the reference environment's Python (`make fixtures` does this):
    REF=$(../shared/reference/setup-reference-env.sh)
    PYTHONPATH=src:tests $REF/bin/python scripts/make_parity_fixtures.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import timm  # the reference implementation: only ever imported here, in its side environment
import torch
from safetensors.torch import save_file

from synthetic import calibration_size, parity_sizes, synthetic_input, synthetic_state_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"
OUT = ROOT / "tests" / "fixtures"


@torch.no_grad()
def main() -> None:
    (OUT / "parity").mkdir(parents=True, exist_ok=True)
    (OUT / "reference").mkdir(parents=True, exist_ok=True)
    for path in sorted(SHARED.glob("*.json")):
        manifest = json.loads(path.read_text())
        name = manifest["name"]
        shutil.copy(path, OUT / "reference" / path.name)
        sd = synthetic_state_dict(manifest["state_dict"])
        model = timm.create_model(name)
        model.load_state_dict(sd, strict=True)
        size = manifest["pretrained_cfg"]["input_size"][-1]
        # Random weights make activations vanish or explode with depth, and the output stops
        # depending on the input. One pass in train mode with a cumulative average sets every
        # BatchNorm's running statistics to that batch's: each layer then normalises, like a
        # trained network. The statistics are stored with the expected outputs.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
                m.reset_running_stats()
        model.train()(synthetic_input(*calibration_size(size)))
        model.eval()
        stats = {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
        sd.update(stats)
        feats = timm.create_model(name, features_only=True).eval()
        feats.load_state_dict({k: v for k, v in sd.items() if k in feats.state_dict()}, strict=True)
        tensors = {f"bn.{k}": v for k, v in stats.items()}
        for tag, (b, h, w) in parity_sizes(size).items():
            x = synthetic_input(b, h, w)
            tensors[f"{tag}.input_sum"] = x.sum().reshape(1)
            if tag == "features":
                for i, f in enumerate(feats(x)):
                    tensors[f"features.{i}"] = f.contiguous()
            else:
                tensors[f"{tag}.logits"] = model(x).contiguous()
                tensors[f"{tag}.pre_logits"] = model.forward_head(model.forward_features(x), pre_logits=True).contiguous()
        save_file(tensors, str(OUT / "parity" / f"{name}.safetensors"),
                  metadata={"reference": f"timm {timm.__version__}, torch {torch.__version__}"})
        print(name, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
