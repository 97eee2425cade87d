"""Ways to keep a copy of a DiT's weights aside in CPU memory, and to copy them back: what the
LoRA merger's first switch on a replica costs (``videoserve/engines/lora.py``).

480 bf16 tensors of the Wan2.1-14B's shapes (40 blocks x 10 attention projections of 5120x5120
and the two FFN layers, about 32 GB) on the GPU are copied to the host:

  per tensor pinned   one ``pin_memory`` allocation per tensor (the first --sample, extrapolated)
  one pinned          one pinned allocation for all (torch rounds it up to a power of two)
  registered          one plain allocation, its pages touched, then ``cudaHostRegister``
  HostBuffers         the merger's way: registered buffers, filled on several threads
  pageable            one plain allocation, not locked
  GPU                 a second copy in GPU memory

and each copy back to the GPU is timed. GPU only.

    python benchmarks/host_copies.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wan14b_shapes() -> list[tuple[int, int]]:
    shapes = []
    for _ in range(40):
        shapes += [(5120, 5120)] * 10 + [(13824, 5120), (5120, 13824)]
    return shapes


def main() -> None:
    import torch

    from videoserve.engines.lora import HostBuffers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=60, help="tensors the per-tensor way")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    def now() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    params = [torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in wan14b_shapes()]
    gb = sum(p.numel() * p.element_size() for p in params) / 1e9
    results: dict[str, dict[str, float]] = {}

    def record(name: str, copies: list, seconds: float) -> None:
        start = now()
        for param, copy in zip(params, copies, strict=True):
            param.copy_(copy, non_blocking=True)
        back = now() - start
        results[name] = {"aside_s": round(seconds, 2), "back_s": round(back, 2)}
        print(f"{name:18s} aside {seconds:6.2f} s   back {back:5.2f} s "
              f"({gb / back:5.1f} GB/s)", flush=True)

    def one_buffer(kind: str) -> tuple[list, float, object]:
        count = sum(p.numel() for p in params)
        start = now()
        if kind == "one pinned":
            buffer = torch.empty(count, dtype=torch.bfloat16, pin_memory=True)
        else:
            buffer = torch.empty(count, dtype=torch.bfloat16)
            if kind == "registered":
                buffer.zero_()
                torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), count * 2, 0)
        copies, offset = [], 0
        for param in params:
            view = buffer[offset:offset + param.numel()].view(param.shape)
            copies.append(view.copy_(param, non_blocking=True))
            offset += param.numel()
        return copies, now() - start, buffer

    print(f"{len(params)} tensors, {gb:.1f} GB", flush=True)
    start = now()
    copies = [p.clone() for p in params]
    record("GPU", copies, now() - start)
    del copies
    torch.cuda.empty_cache()

    start = now()
    sample = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True).copy_(p)
              for p in params[:args.sample]]
    part = sum(p.numel() * p.element_size() for p in params[:args.sample]) / 1e9
    seconds = (now() - start) * gb / part
    results["per tensor pinned"] = {"aside_s": round(seconds, 2), "extrapolated_from_gb": part}
    print(f"{'per tensor pinned':18s} aside {seconds:6.2f} s   (from {part:.1f} GB)", flush=True)
    del sample

    for kind in ("one pinned", "registered", "pageable"):
        copies, seconds, buffer = one_buffer(kind)
        record(kind, copies, seconds)
        if kind == "registered":
            torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
        del copies, buffer

    host = HostBuffers()
    start = now()
    copies = host.copies_of(params)
    record("HostBuffers", copies, now() - start)
    reference = results["per tensor pinned"]["aside_s"]
    print(json.dumps({name: round(reference / r["aside_s"], 2) for name, r in results.items()
                      if name != "per tensor pinned"} | {"_": "per tensor pinned / each"}),
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gb": gb, "results": results}, indent=2))


if __name__ == "__main__":
    main()
