"""Training-step speed of bf16 autocast (`--amp` on CPU) against fp32, one model per process.

    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384 python scripts/bench_train_amp.py --model efficientnet_b1_pruned

fp32 and bf16 steps alternate round by round (A B, then B A) after two warm-up steps each; prints one
JSON line with the median wall seconds per step of each and the bf16 speed-up, and the same from
process CPU time (steadier than wall time on a shared machine; exact with --threads 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_b1_pruned")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    import effnet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = effnet.create_model(args.model, num_classes=10).train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(amp: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    for amp in (False, True, False, True):
        step(amp)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(args.rounds):
        for amp in ((False, True) if r % 2 == 0 else (True, False)):
            times[amp].append(step(amp))
    med = {amp: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for amp, v in times.items()}
    print(json.dumps(dict(model=args.model, batch=args.batch, size=args.size, threads=args.threads,
                          fp32_step_s=round(med[False][0], 3), bf16_step_s=round(med[True][0], 3),
                          speedup_wall=round(med[False][0] / med[True][0], 2),
                          speedup_cpu=round(med[False][1] / med[True][1], 2),
                          onednn_cache=os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "default"),
                          load=round(os.getloadavg()[0], 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
