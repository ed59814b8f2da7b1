"""Why `--int8` loses cosine on Gemma, and what recovers it (an experiment behind benchmarks/README.md, issue 19).

Embeds 64 demo notes with zero-shot Gemma 3 270M in float32, then with int8 variants, and prints each one's
min / mean cosine to float32: per-input-channel SmoothQuant-style rescaling (x / s, W * s, with
s = max|x|^a / max|W|^(1-a) from 32 calibration notes) at a = .5, .7, .85, and a = .5 with down_proj kept in
float32. The rescaling runs as an extra multiply here (not folded into the preceding weights), so the notes/s
it prints are not the speed such a path would have.

    .venv/bin/python benchmarks/int8_outliers.py
"""
import sys
from pathlib import Path
import copy, time, warnings
import numpy as np, torch
from torch import nn
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import demo_notes
from notellm.inference.embed import Embedder
from notellm.inference.quantize import int8_engine
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
torch.backends.quantized.engine = int8_engine()
notes = demo_notes(96)
calib, test = notes[64:], notes[:64]
base = Embedder("zero-shot:gemma-3-270m", bf16=False)
ref = base.encode(test)
model0 = base.model
dec0 = model0.lm.get_decoder()
names = [n for n, m in dec0.named_modules() if isinstance(m, nn.Linear)]
# calibrate: per input channel max |x|
amax = {}
hooks = []
for n, m in dec0.named_modules():
    if isinstance(m, nn.Linear):
        def hook(mod, inp, out, n=n):
            x = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
            amax[n] = torch.maximum(amax[n], x) if n in amax else x
        hooks.append(m.register_forward_hook(hook))
base.encode(calib)
for h in hooks: h.remove()
class Scaled(nn.Module):
    def __init__(self, inv, lin):
        super().__init__(); self.register_buffer("inv", inv); self.lin = lin
    def forward(self, x): return self.lin(x * self.inv)
def run(label, alpha, skip=lambda n: False):
    m = copy.deepcopy(model0)
    dec = m.lm.get_decoder()
    for n in names:
        if skip(n): continue
        parent = dec.get_submodule(n.rsplit(".", 1)[0]); attr = n.rsplit(".", 1)[1]
        lin = getattr(parent, attr)
        w = lin.weight.data.abs().amax(0).clamp(min=1e-5)
        s = (amax[n].clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(min=1e-5)
        lin.weight.data = lin.weight.data * s
        q = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
        setattr(parent, attr, Scaled(1.0 / s, q))
    base.model = m
    t = time.perf_counter(); v = base.encode(test); dt = time.perf_counter() - t
    cos = np.sum(v * ref, 1)
    print(f"{label:40s} min {cos.min():.4f} mean {cos.mean():.4f} {64/dt:.1f} notes/s", flush=True)
for a in (0.5, 0.7, 0.85):
    run(f"smooth alpha {a}", a)
run("smooth 0.5, down_proj fp32", 0.5, lambda n: n.endswith("down_proj"))
