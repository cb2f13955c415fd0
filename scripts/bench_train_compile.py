"""Time torch.compile (inductor) of one training step, effnet's or the reference's, in a fresh process.

    python scripts/bench_train_compile.py --impl effnet --model tf_efficientnet_cc_b0_4e
    PYTHONPATH=src /path/to/timm-env/bin/python scripts/bench_train_compile.py --impl reference

Prints one JSON line: the first compiled step (compile + run) in wall seconds and in CPU seconds of this
process and its compiler children (the figure that holds on a loaded machine), the median warm compiled
step and the median warm eager step. `--grouped` makes effnet's CondConv depthwise convs use the grouped
conv (the eager formulation) under compile too, instead of the sum over kernel taps. Inductor's on-disk caches are pointed at a fresh folder, so every run compiles
from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable


def _step_fn(model: Any, x: Any, y: Any, opt: Any) -> Callable[[], float]:
    import torch.nn.functional as F

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("effnet", "reference"), default="effnet")
    p.add_argument("--model", default="tf_efficientnet_cc_b0_4e")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="warm steps timed after the compile")
    p.add_argument("--grouped", action="store_true", help="effnet: grouped-conv CondConv depthwise under compile")
    args = p.parse_args(argv)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.impl == "reference":
        import timm
        model = timm.create_model(args.model, num_classes=10)
    else:
        import effnet
        if args.grouped:
            import effnet.layers
            effnet.layers._tracing = lambda: False
        model = effnet.create_model(args.model, num_classes=10)
    model.train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    eager = _step_fn(model, x, y, opt)
    for _ in range(2):
        eager()
    eager_s = statistics.median(_timed(eager) for _ in range(args.steps))
    compiled = _step_fn(torch.compile(model), x, y, opt)
    cpu = _cpu_seconds()
    first_s = _timed(compiled)
    first_cpu_s = _cpu_seconds() - cpu
    compiled()
    warm_s = statistics.median(_timed(compiled) for _ in range(args.steps))
    print(json.dumps(dict(impl=args.impl, model=args.model, batch=args.batch, size=args.size, threads=args.threads,
                          grouped=args.grouped,
                          first_compiled_step_s=round(first_s, 2), first_compiled_step_cpu_s=round(first_cpu_s, 1),
                          compiled_step_s=round(warm_s, 3),
                          eager_step_s=round(eager_s, 3), load=os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
