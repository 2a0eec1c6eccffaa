"""How close PyTorch's own bf16 autocast path gets to the float64 golden files.

    python3 torch-bf16-golden.py REFERENCE_DIR GOLDEN.safetensors...

Runs pgref.py's model (bf16 autocast on the GPU, fused SDPA, fp32 master
weights: the training scripts' precision) on each golden file's params and
tokens, train and eval, and prints the relative error max|a-b|/max|b| of the
loss, logits and every gradient against the stored float64 results: the
yardstick for pgc's bf16 tolerance.
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, sys.argv[1])
import pgref  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def main() -> None:
    dev = torch.device("cuda")
    worst_all = 0.0
    for path in sys.argv[2:]:
        with safe_open(path, "pt") as f:
            c = pgref.Config(**json.loads(f.metadata()["config"]))
        t = load_file(path)
        ids, tgt = t["input_ids"].long().to(dev), t["target_ids"].long().to(dev)
        for mode, qat in (("train", True), ("eval", False)):
            p = {k[6:]: v.float().to(dev).requires_grad_(True) for k, v in t.items() if k.startswith("param.")}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, z = pgref.loss_fn(c, p, ids, tgt, qat, fused_sdpa=True)
            loss.backward()
            errs = {"loss": rel(loss.detach().reshape(1), t[f"{mode}.loss"]), "logits": rel(z.detach().float(), t[f"{mode}.logits"])}
            for k, v in p.items():
                errs[f"grad.{k}"] = rel(v.grad, t[f"{mode}.grad.{k}"])
            worst = sorted(errs.items(), key=lambda kv: -kv[1])
            over = sum(1 for _, e in errs.items() if e > 2e-2)
            name = path.rsplit("/", 1)[-1].split(".")[0]
            print(f"torch bf16 autocast {name} {mode}: loss {errs['loss']:.2e} logits {errs['logits']:.2e}; "
                  f"{over} tensors over 2e-2; worst " + ", ".join(f"{k} {e:.2e}" for k, e in worst[:4]))
            worst_all = max(worst_all, worst[0][1])
    print(f"torch bf16 autocast worst tensor over all cases: {worst_all:.2e}")


if __name__ == "__main__":
    main()
