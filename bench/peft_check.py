#!/usr/bin/env python3
"""Checks loftqd's published layout against the reference implementation (PEFT + transformers).

Needs torch, safetensors, transformers, peft and scipy (PEFT's NF tables); runs where those are
installed (the GPU machine in bench/device_check.sh). Inputs are made by loftqd itself:

  --model DIR   the original checkpoint (loftqd synth, llama)
  --t1 DIR      loftqd quantize --iters 1 --svd exact of it (Q = quant(W), BA = SVD_r(W - Q))
  --t5 DIR      loftqd quantize --iters 5 --svd exact of it
  --repo ID --endpoint URL   optional: the t5 result published to a loftqd mirror; loaded with
                stock huggingface_hub / PEFT through HF_ENDPOINT

Checks (each prints one 'check:' line; the exit status is 1 when one fails):
  1. quantizer parity: for every target weight, PEFT's NFQuantizer (block 64, the layer's bits)
     dequantized and cast to the checkpoint dtype equals loftqd's T=1 backbone element for element;
  2. first-iteration factors: loftqd's B@A (times the LoRA scaling) against PEFT's
     _low_rank_decomposition of W - Q (relative Frobenius difference; bf16 storage bounds it);
  3. LoftQ error at T=5: loftqd's ||W - Q - sBA|| / ||W|| (from the stored files) against PEFT's
     loftq_init (NFQuantizer path, fp32, then cast like ours);
  4. PeftModel.from_pretrained(base, t5, subfolder="loftq_init", is_trainable=True) loads every
     LoRA tensor unchanged, has trainable parameters, and its logits are closer to the original
     model's than those of the plain quantized model (QLoRA initialisation, B = 0);
  5. (with --endpoint) snapshot_download through HF_ENDPOINT gives byte-identical files, and
     PeftModel.from_pretrained(base, REPO, subfolder="loftq_init") loads from the mirror.
"""
import argparse
import hashlib
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--t1", required=True)
ap.add_argument("--t5", required=True)
ap.add_argument("--repo")
ap.add_argument("--endpoint")
ap.add_argument("--json-out")
args = ap.parse_args()
if args.endpoint:
    # Read when huggingface_hub is imported: set it before anything imports it.
    os.environ["HF_ENDPOINT"] = args.endpoint
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("HF_HUB_OFFLINE", None)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

results = {}
failed = []


def check(name, ok, detail):
    results[name] = {"ok": bool(ok), **detail}
    print(f"check: {name}: {'PASS' if ok else 'FAIL'} {json.dumps(detail)}", flush=True)
    if not ok:
        failed.append(name)


def load_dir(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


dev = "cuda" if torch.cuda.is_available() else "cpu"
print(f"torch {torch.__version__} on {dev}", flush=True)
import importlib  # noqa: E402
import pkgutil  # noqa: E402

import peft  # noqa: E402
import transformers  # noqa: E402
from peft.import_utils import is_bnb_4bit_available  # noqa: E402

print(f"peft {peft.__version__}, transformers {transformers.__version__}, "
      f"bitsandbytes 4-bit available: {is_bnb_4bit_available()}", flush=True)


def find_in_peft(name):
    """PEFT's own object `name`, wherever this PEFT version keeps it (None if it has none)."""
    try:
        mod = importlib.import_module("peft.utils.loftq_utils")
        if hasattr(mod, name):
            return getattr(mod, name)
        print(f"peft.utils.loftq_utils has no {name}; its names: "
              f"{sorted(n for n in dir(mod) if not n.startswith('__'))}", flush=True)
    except ImportError as e:
        print(f"peft.utils.loftq_utils: {e}", flush=True)
    for info in pkgutil.walk_packages(peft.__path__, "peft."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # optional integrations may not import here
            continue
        if hasattr(mod, name):
            print(f"found {name} in {info.name}", flush=True)
            return getattr(mod, name)
    return None


NFQuantizer = find_in_peft("NFQuantizer")
_low_rank_decomposition = find_in_peft("_low_rank_decomposition")
loftq_init = find_in_peft("loftq_init")

orig = load_dir(args.model)
t1 = load_dir(args.t1)
t5 = load_dir(args.t5)
a1 = load_file(os.path.join(args.t1, "loftq_init", "adapter_model.safetensors"))
a5 = load_file(os.path.join(args.t5, "loftq_init", "adapter_model.safetensors"))
j1 = json.load(open(os.path.join(args.t1, "loftq.json")))
j5 = json.load(open(os.path.join(args.t5, "loftq.json")))
cfg5 = json.load(open(os.path.join(args.t5, "loftq_init", "adapter_config.json")))
rank = j5["rank"]
scaling = cfg5["lora_alpha"] / cfg5["r"]


def lora_keys(name):
    base = "base_model.model." + name[: -len(".weight")]
    return base + ".lora_A.weight", base + ".lora_B.weight"


def skip(name, why):
    results[name] = {"ok": None, "skipped": why}
    print(f"check: {name}: SKIPPED {why}", flush=True)


# 1 + 2: quantizer and first-iteration parity.
def reference_checks():
    mism_total = elems_total = 0
    worst_fac = 0.0
    per_bits = {}
    for layer in j1["layers"]:
        name, bits = layer["tensor"], layer["bits"]
        if layer["quant"] not in ("nf4", "nf2"):
            continue
        w = orig[name].to(dev, torch.float32)
        qz = NFQuantizer(num_bits=bits, device=dev, method="normal", block_size=64)
        qp = qz.dequantize_block(*qz.quantize_block(w))
        ours = t1[name].to(dev)
        mism = (qp.to(ours.dtype) != ours).sum().item()
        mism_total += mism
        elems_total += w.numel()
        pb = per_bits.setdefault(bits, [0, 0])
        pb[0] += mism
        pb[1] += w.numel()
        ka, kb = lora_keys(name)
        dec = _low_rank_decomposition(w - qp, reduced_rank=rank)
        ref = dec["L"] @ dec["R"]
        mine = scaling * (a1[kb].to(dev, torch.float32) @ a1[ka].to(dev, torch.float32))
        rel = ((mine - ref).norm() / ref.norm()).item()
        worst_fac = max(worst_fac, rel)
    check("quantizer_parity_t1", mism_total == 0,
          {"mismatched": mism_total, "elements": elems_total,
           "by_bits": {str(b): {"mismatched": v[0], "elements": v[1]} for b, v in per_bits.items()}})
    check("first_iteration_factors", worst_fac < 2e-2, {"worst_relative_difference": worst_fac})

    # 3: LoftQ error at T=5 against PEFT's loftq_init.
    rows = []
    for layer in j5["layers"]:
        name, bits = layer["tensor"], layer["bits"]
        if layer["quant"] not in ("nf4", "nf2"):
            continue
        w = orig[name].to(dev, torch.float32)
        ka, kb = lora_keys(name)
        q = t5[name].to(dev, torch.float32)
        ba = scaling * (a5[kb].to(dev, torch.float32) @ a5[ka].to(dev, torch.float32))
        ours = ((w - q - ba).norm() / w.norm()).item()
        t0 = time.time()
        qp, la, lb = loftq_init(w, num_bits=bits, reduced_rank=rank, num_iter=j5["iters"])
        dt = time.time() - t0
        dtype = orig[name].dtype
        qp_c = qp.to(dtype).to(torch.float32)
        ba_c = lb.to(dtype).to(torch.float32) @ la.to(dtype).to(torch.float32)
        peft_err = ((w - qp_c - ba_c).norm() / w.norm()).item()
        peft_err_fp32 = ((w - qp - lb @ la).norm() / w.norm()).item()
        rows.append((name, bits, ours, layer["loftq_error"], peft_err, peft_err_fp32, dt))
    ratio = max(r[2] / r[4] for r in rows)
    mean_ours = sum(r[2] for r in rows) / len(rows)
    mean_peft = sum(r[4] for r in rows) / len(rows)
    reported_gap = max(abs(r[2] - r[3]) / r[3] for r in rows)
    print(f"{'tensor':45s} bits  loftqd   reported  peft(bf16) peft(fp32)  peft s")
    for r in rows:
        print(f"{r[0]:45s} {r[1]:4d}  {r[2]:.5f}  {r[3]:.5f}   {r[4]:.5f}    {r[5]:.5f}   {r[6]:.2f}")
    check("loftq_error_vs_peft", ratio <= 1.01,
          {"worst_ratio_loftqd_over_peft": ratio, "mean_loftqd": mean_ours, "mean_peft": mean_peft,
           "worst_gap_file_vs_loftq_json": reported_gap, "layers": len(rows)})

if NFQuantizer and _low_rank_decomposition and loftq_init:
    try:
        reference_checks()
    except Exception as e:  # a changed PEFT API: report it, run the remaining checks
        check("reference_checks", False, {"error": repr(e)})
else:
    for n in ("quantizer_parity_t1", "first_iteration_factors", "loftq_error_vs_peft"):
        skip(n, f"peft {peft.__version__} has no NFQuantizer/_low_rank_decomposition/loftq_init")

# 4: PEFT loads the layout; the adapter brings the logits back towards the original model.
def peft_load_check():
    from transformers import AutoModelForCausalLM  # noqa: E402
    from peft import PeftModel  # noqa: E402

    torch.manual_seed(0)
    ids = torch.randint(0, json.load(open(os.path.join(args.model, "config.json")))["vocab_size"],
                        (2, 64), device=dev)

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids).logits.float()

    m_orig = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(dev).eval()
    l_orig = logits(m_orig)
    # QLoRA initialisation: the original weights quantized, no adapter. loftqd's T=1 backbone is
    # exactly quant(W) (check 1 compares it with PEFT's quantizer).
    m_q = AutoModelForCausalLM.from_pretrained(args.t1, dtype=torch.float32).to(dev).eval()
    l_q = logits(m_q)
    del m_q
    base = AutoModelForCausalLM.from_pretrained(args.t5, dtype=torch.float32).to(dev)
    pm = PeftModel.from_pretrained(base, args.t5, subfolder="loftq_init", is_trainable=True).to(dev)
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    sd = pm.state_dict()
    unchanged = 0
    for k, v in a5.items():
        kk = k.replace(".weight", ".default.weight")
        if kk in sd and torch.equal(sd[kk].to("cpu", v.dtype), v):
            unchanged += 1
    pm.eval()
    l_loftq = logits(pm)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    err_q, err_loftq = rel(l_q, l_orig), rel(l_loftq, l_orig)
    check("peft_load", unchanged == len(a5) and trainable > 0 and err_loftq < err_q,
          {"lora_tensors": len(a5), "loaded_unchanged": unchanged, "trainable_params": trainable,
           "logits_rel_err_qlora": err_q, "logits_rel_err_loftq": err_loftq,
           "peft_type": str(pm.peft_config["default"].peft_type)})

    return trainable


# 5: stock huggingface_hub + PEFT through HF_ENDPOINT against loftqd's mirror.
def hub_check(trainable):
    if args.endpoint and args.repo:
        from huggingface_hub import snapshot_download
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hf-cache-peft-check")
        t0 = time.time()
        snap = snapshot_download(args.repo, cache_dir=cache)
        dt = time.time() - t0
        same = differ = 0
        for root, _, files in os.walk(args.t5):
            for f in files:
                p = os.path.join(root, f)
                rp = os.path.relpath(p, args.t5)
                q = os.path.join(snap, rp)
                h = lambda x: hashlib.sha256(open(x, "rb").read()).hexdigest()  # noqa: E731
                if os.path.exists(q) and h(p) == h(q):
                    same += 1
                else:
                    differ += 1
        base2 = AutoModelForCausalLM.from_pretrained(args.repo, dtype=torch.float32, cache_dir=cache)
        pm2 = PeftModel.from_pretrained(base2, args.repo, subfolder="loftq_init", is_trainable=True,
                                        cache_dir=cache)
        n2 = sum(p.numel() for p in pm2.parameters() if p.requires_grad)
        check("hf_endpoint_mirror", differ == 0 and same > 0 and n2 == trainable,
              {"endpoint": args.endpoint, "files_identical": same, "files_different": differ,
               "snapshot_seconds": dt, "trainable_params": n2})


trainable = None
try:
    trainable = peft_load_check()
except Exception as e:
    check("peft_load", False, {"error": repr(e)})
try:
    hub_check(trainable)
except Exception as e:
    check("hf_endpoint_mirror", False, {"error": repr(e)})

if args.json_out:
    json.dump(results, open(args.json_out, "w"), indent=2)
print(f"peft_check: {len(results) - len(failed)}/{len(results)} checks passed"
      + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
sys.exit(1 if failed else 0)
