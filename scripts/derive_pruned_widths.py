"""Prints the PrunedWidths rows of src/effnet/variants.py from a published checkpoint's manifest.

usage: python scripts/derive_pruned_widths.py ../shared/reference/efficientnet_b1_pruned.json
The widths were derived once this way; tests/test_variants.py checks them against the manifests.
"""

import json
import re
import sys
from collections import defaultdict


def derive(manifest: dict) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """Read (stage out width, per-block (mid, se)) off the state-dict shapes."""
    shapes = dict((k, v) for k, v in manifest["state_dict"])
    blocks: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
    stage_out: dict[int, int] = {}
    for key in shapes:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.conv_dw\.weight$", key)
        if not m:
            continue
        s, i = int(m.group(1)), int(m.group(2))
        prefix = f"blocks.{s}.{i}"
        mid = shapes[f"{prefix}.conv_dw.weight"][0]
        se = shapes[f"{prefix}.se.conv_reduce.weight"][0]
        proj = shapes.get(f"{prefix}.conv_pwl.weight") or shapes[f"{prefix}.conv_pw.weight"]
        blocks[s][i] = (mid, se)
        stage_out[s] = proj[0]
    n = max(blocks) + 1
    return [stage_out[s] for s in range(n)], [[blocks[s][i] for i in sorted(blocks[s])] for s in range(n)]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        out, blocks = derive(json.load(open(path)))
        print(f"# {path}")
        for s, (o, b) in enumerate(zip(out, blocks)):
            print(f"    ({o:4d}, {tuple(b)}),")
