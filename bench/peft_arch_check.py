#!/usr/bin/env python3
"""Loads loftqd's output for each registry architecture with the real transformers + PEFT
(+ bitsandbytes NF4 where CUDA and bitsandbytes are there) and compares it with the original.

Run by bench/device_check.sh on a GPU machine (torch, transformers, peft, bitsandbytes). Inputs
are made by loftqd itself: `loftqd synth --arch A IN` and `loftqd quantize --rank 8 --iters 2 IN OUT`.

  --model IN --out OUT --arch A [--label L]   one case
  --case LABEL ARCH IN OUT                     one case (repeatable: all cases in one process,
                                               so torch and transformers are imported once)
  --json-out FILE     append one JSON record per case (JSON lines)
  --files-only        only check 1 (needs no torch: runs anywhere)
  --table FILE        no checks: print the markdown table of FILE's records (--expect LABEL...
                      marks the cases without a record, --machine names the machine)

Per case (one `arch: L check: NAME ok|FAIL|skipped detail` line each; exit 1 if one failed):
  1. files: OUT/loftq_init/adapter_config.json, OUT/loftq.json and the README's loading snippet
     agree (task type, Auto class, fan_in_fan_out for Conv1D, llm_int8_skip_modules, left-outs),
     and the adapter file holds lora_A (r, in) and lora_B (out, r) for each recorded module;
  2. keys: the original and OUT load with the task's Auto class in float32 with the same
     missing/unexpected keys; PeftModel.from_pretrained(base, OUT, subfolder="loftq_init",
     is_trainable=True) loads every adapter tensor unchanged, with no missing or unexpected
     adapter key, wraps exactly the modules loftq.json records, and its peft_config is the file's;
  3. effective_weights: for each wrapped module, ||W - (base + s B A [transposed for Conv1D])|| /
     ||W|| equals loftq.json's loftq_error within --rel-tol (relative; bf16 storage) and is below
     its qlora_error;
  4. forward_fp32: on fixed random ids (+ decoder ids for seq2seq, an attention mask), the PEFT
     model's logits (classifier logits for SEQ_CLS; the last hidden state when the original
     checkpoint lacks weights the class has, e.g. a base-class save's head) are closer to the
     original's than the plain backbone's (adapter disabled: the QLoRA-style start);
  5. nf4: OUT loaded with BitsAndBytesConfig(load_in_4bit, nf4, compute float32, the skip list of
     loftq.json), PeftModel on top: every bitsandbytes Linear4bit is the base layer of a LoRA
     module (no uncorrected quantized weight), and the forward error is below the NF4 backbone's
     with the adapter disabled.
"""
import argparse
import ast
import datetime
import gc
import json
import os
import re
import struct
import sys
import time
import traceback
import warnings

TASK_AUTO = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
             "SEQ_CLS": "AutoModelForSequenceClassification"}
PEFT_PREFIX = "base_model.model."
CHECKS = ["files", "keys", "effective_weights", "forward_fp32", "nf4"]

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--model")
ap.add_argument("--out")
ap.add_argument("--arch")
ap.add_argument("--label")
ap.add_argument("--case", nargs=4, action="append", default=[],
                metavar=("LABEL", "ARCH", "MODEL", "OUT"))
ap.add_argument("--json-out")
ap.add_argument("--rel-tol", type=float, default=1e-3)
ap.add_argument("--files-only", action="store_true")
ap.add_argument("--no-nf4", action="store_true")
ap.add_argument("--table")
ap.add_argument("--expect", nargs="*", default=[])
ap.add_argument("--machine", default="")
args = ap.parse_args()


def short(e, n=300):
    s = f"{type(e).__name__}: {e}" if isinstance(e, BaseException) else str(e)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def some(xs, n=3):
    xs = sorted(xs)
    return ", ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")


# ---------------------------------------------------------------- table mode (no torch needed)
def cell(c):
    if not c:
        return "—"
    if c["ok"] is None:
        return "skipped: " + c.get("short", c["detail"])
    return ("ok" if c["ok"] else "**FAIL**") + ": " + c.get("short", c["detail"])


def table(path, expect, machine):
    recs = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line:
                try:
                    r = json.loads(line)
                    recs[r["label"]] = r
                except (ValueError, KeyError):
                    pass
    labels = list(expect) + [k for k in recs if k not in expect]
    first = next(iter(recs.values()), {})
    v = first.get("versions", {})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    vs = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "peft", "bitsandbytes", "device") if k in v)
    print(f"Last run: {date} on {machine or 'an unnamed machine'}" + (f"; {vs}." if vs else "."))
    print()
    print("| architecture | keys | effective weights | forward fp32 | NF4 | result |")
    print("|---|---|---|---|---|---|")
    npass = 0
    for lab in labels:
        r = recs.get(lab)
        if r is None:
            print(f"| `{lab}` | — | — | — | — | **FAIL**: no record (the run timed out or crashed) |")
            continue
        ch = r.get("checks", {})
        bad = [n for n in CHECKS if ch.get(n, {}).get("ok") is False]
        unrun = [n for n in ("keys", "effective_weights", "forward_fp32") if ch.get(n, {}).get("ok") is None]
        res = ("**FAIL** (" + ", ".join(bad) + ")" if bad
               else "**incomplete** (not run: " + ", ".join(unrun) + ")" if unrun else "ok")
        npass += not bad and not unrun
        cells = [cell(ch.get(n)) for n in ("keys", "effective_weights", "forward_fp32", "nf4")]
        if ch.get("files", {}).get("ok") is False:
            res += "; files: " + ch["files"].get("short", ch["files"]["detail"])
        print(f"| `{lab}` | " + " | ".join(c.replace("|", "/") for c in cells)
              + f" | {res.replace('|', '/')} |")
    print()
    print(f"{npass} of {len(labels)} passed every check.")
    return 0 if npass == len(labels) else 1


if args.table:
    sys.exit(table(args.table, args.expect, args.machine))

cases = [tuple(c) for c in args.case]
if args.model or args.out:
    if not (args.model and args.out):
        ap.error("--model and --out go together")
    cases.append((args.label or args.arch or os.path.basename(args.out.rstrip("/")),
                  args.arch or "", args.model, args.out))
if not cases:
    ap.error("no case: give --model IN --out OUT --arch A, or --case LABEL ARCH IN OUT")


# ---------------------------------------------------------------- per-case bookkeeping
class Case:
    def __init__(self, label, arch, model, out):
        self.label, self.arch, self.model, self.out = label, arch, model, out
        self.checks = {}

    def report(self, name, ok, detail, short_=None, **data):
        self.checks[name] = {"ok": ok, "detail": detail, "short": short_ or detail, **data}
        word = "skipped" if ok is None else ("ok" if ok else "FAIL")
        print(f"arch: {self.label} check: {name} {word} {detail}", flush=True)

    def skip_rest(self, why):
        for n in CHECKS:
            if n not in self.checks:
                self.report(n, None, why)


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def snippet_of(readme):
    """The ```python block of the card's Loading section (None if absent)."""
    m = re.search(r"^## Loading\s*$(.*?)^## ", readme + "\n## ", re.S | re.M)
    body = m.group(1) if m else readme
    m = re.search(r"```python\n(.*?)```", body, re.S)
    return m.group(1) if m else None


def covered(module, skip):
    """bitsandbytes' skip list names modules by leaf or by dotted part of the name."""
    return any(s == module or ("." + s + ".") in ("." + module + ".") for s in skip)


# ---------------------------------------------------------------- 1. files
def check_files(c):
    """Reads and cross-checks the files; returns (adapter_config, loftq_json, adapter keys)."""
    out = c.out
    paths = {"loftq.json": os.path.join(out, "loftq.json"),
             "adapter_config.json": os.path.join(out, "loftq_init", "adapter_config.json"),
             "adapter_model.safetensors": os.path.join(out, "loftq_init", "adapter_model.safetensors"),
             "README.md": os.path.join(out, "README.md")}
    missing = [k for k, p in paths.items() if not os.path.exists(p)]
    if missing:
        c.report("files", False, f"{out} has no {', '.join(missing)} (did loftqd quantize fail? see its log)",
                 "output files missing")
        return None
    cfg = json.load(open(paths["adapter_config.json"]))
    lj = json.load(open(paths["loftq.json"]))
    readme = open(paths["README.md"], encoding="utf-8").read()
    hdr = safetensors_header(paths["adapter_model.safetensors"])
    problems = []
    arch = lj.get("architecture", {})
    task = cfg.get("task_type")
    if cfg.get("peft_type") != "LORA":
        problems.append(f"adapter peft_type {cfg.get('peft_type')!r}, not LORA")
    if task not in TASK_AUTO:
        problems.append(f"adapter task_type {task!r} is none of {sorted(TASK_AUTO)}")
    if arch.get("task_type") != task:
        problems.append(f"loftq.json task_type {arch.get('task_type')!r} != adapter's {task!r}")
    auto = TASK_AUTO.get(task)
    if arch.get("auto_class") != auto:
        problems.append(f"loftq.json auto_class {arch.get('auto_class')!r}, expected {auto}")
    if c.arch and lj.get("model_type") != c.arch:
        problems.append(f"loftq.json model_type {lj.get('model_type')!r} != --arch {c.arch}")
    layers = lj.get("layers") or []
    if not layers:
        problems.append("loftq.json records no layer")
    if lj.get("rank") != cfg.get("r") or lj.get("lora_alpha") != cfg.get("lora_alpha"):
        problems.append(f"rank/lora_alpha: loftq.json {lj.get('rank')}/{lj.get('lora_alpha')}, "
                        f"adapter {cfg.get('r')}/{cfg.get('lora_alpha')}")
    conv = {bool(l.get("conv1d")) for l in layers}
    if True in conv and not cfg.get("fan_in_fan_out"):
        problems.append("Conv1D layers recorded but adapter fan_in_fan_out is false (PEFT forces true)")
    if conv == {False} and cfg.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out true without a Conv1D layer")
    r = cfg.get("r")
    want = set()
    for l in layers:
        p = PEFT_PREFIX + l.get("module_path", "?")
        ka, kb = p + ".lora_A.weight", p + ".lora_B.weight"
        want |= {ka, kb}
        out_f, in_f = (l.get("shape") or [None, None])[:2]
        if ka not in hdr or kb not in hdr:
            problems.append(f"adapter file lacks {ka if ka not in hdr else kb}")
        elif hdr[ka]["shape"] != [r, in_f] or hdr[kb]["shape"] != [out_f, r]:
            problems.append(f"{l['module_path']}: lora_A {hdr[ka]['shape']}, lora_B {hdr[kb]['shape']}, "
                            f"expected [{r}, {in_f}] and [{out_f}, {r}]")
    extra = set(hdr) - want
    if extra:
        problems.append(f"adapter file keys with no loftq.json record: {some(extra)}")
    skip = lj.get("llm_int8_skip_modules") or []
    for lo in lj.get("left_out") or []:
        if not covered(lo.get("module", ""), skip):
            problems.append(f"left-out {lo.get('module')} is not in llm_int8_skip_modules {skip}")
    snip = snippet_of(readme)
    if snip is None:
        problems.append("README.md has no ```python loading snippet")
    else:
        for need in (f"{auto}.from_pretrained(", "PeftModel.from_pretrained(", 'subfolder="loftq_init"',
                     "load_in_4bit=True", 'bnb_4bit_quant_type="nf4"'):
            if need not in snip:
                problems.append(f"snippet lacks {need}")
        m = re.search(r"llm_int8_skip_modules\s*=\s*(\[[^\]]*\])", snip)
        try:
            snip_skip = ast.literal_eval(m.group(1)) if m else []
        except (ValueError, SyntaxError):
            snip_skip = None
        if snip_skip != skip:
            problems.append(f"snippet llm_int8_skip_modules {snip_skip} != loftq.json {skip}")
    ok = not problems
    detail = (f"{len(layers)} records, {len(hdr)} adapter tensors, task {task}, "
              f"conv1d {sorted(conv)}, skip {skip}, left_out {len(lj.get('left_out') or [])}"
              if ok else "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""))
    c.report("files", ok, detail, None if ok else problems[0])
    return cfg, lj, set(hdr)


if args.files_only:
    nfail = 0
    for lab, arch, model, out in cases:
        c = Case(lab, arch, model, out)
        try:
            check_files(c)
        except Exception as e:
            c.report("files", False, f"could not read the files: {short(e)}")
        nfail += c.checks["files"]["ok"] is False
        c.skip_rest("--files-only")
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps({"label": lab, "arch": arch, "model": model, "out": out,
                                    "ok": c.checks["files"]["ok"], "versions": {}, "checks": c.checks}) + "\n")
    sys.exit(1 if nfail else 0)

# ---------------------------------------------------------------- the real stack
import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda" if torch.cuda.is_available() else "cpu"
try:
    import bitsandbytes as bnb  # noqa: E402
    bnb_version, bnb_error = getattr(bnb, "__version__", "?"), None
except Exception as e:  # missing, or no usable CUDA build
    bnb, bnb_version, bnb_error = None, None, short(e)
try:
    from packaging.version import Version
    new_dtype_kw = Version(transformers.__version__.split("+")[0]) >= Version("4.56.0")
except Exception:
    new_dtype_kw = True
DTYPE_KW = "dtype" if new_dtype_kw else "torch_dtype"
versions = {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bnb_version or f"unavailable ({bnb_error})",
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}
print("peft_arch_check: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)


def load(auto_cls, path, quant=None):
    """from_pretrained in float32 (4-bit on cuda:0 with quant); returns (model, loading info)."""
    kw = {DTYPE_KW: torch.float32, "output_loading_info": True}
    if quant is not None:
        kw["quantization_config"] = quant
        kw["device_map"] = {"": 0}
    torch.manual_seed(0)  # weights the checkpoint lacks get the same random values in every load
    res = auto_cls.from_pretrained(path, **kw)
    model, info = res if isinstance(res, tuple) else (res, {})
    if quant is None:
        model = model.float().to(dev)
    model.eval()
    # Lists or sets by version; mismatched_keys holds (key, shape, shape) tuples.
    return model, {k: sorted(str(x) for x in ((info or {}).get(k) or []))
                   for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}


def load_peft(base, out):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, out, subfolder="loftq_init", is_trainable=True)
    msgs = [short(w.message, 200) for w in caught
            if "adapter key" in str(w.message) or "fan_in_fan_out" in str(w.message)]
    pm.eval()
    return pm, msgs


def wrapped_modules(pm):
    """{task-class module path: LoRA layer} for every module PEFT wrapped with adapter 'default'."""
    out = {}
    for name, m in pm.named_modules():
        if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_A", {}):
            out[name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name] = m
    return out


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_inputs(vocab, task):
    g = torch.Generator().manual_seed(1234)
    lo = 4 if vocab > 8 else 0  # stay clear of the special ids (pad, bos, eos) of small vocabularies
    ids = torch.randint(lo, vocab, (2, 32), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -8:] = 0
    inp = {"input_ids": ids, "attention_mask": mask}
    if task == "SEQ_2_SEQ_LM":
        inp["decoder_input_ids"] = torch.randint(lo, vocab, (2, 16), generator=g)
    return inp


def forward(m, inp, hidden, device):
    with torch.no_grad():
        o = m(**{k: v.to(device) for k, v in inp.items()}, output_hidden_states=hidden)
    if hidden:
        hs = getattr(o, "decoder_hidden_states", None) or o.hidden_states
        return hs[-1].float()
    return o.logits.float()


def run_case(c):
    got = check_files(c)
    if got is None:
        c.skip_rest("files unreadable")
        return
    cfg, lj, file_keys = got
    task = cfg["task_type"]
    auto_cls = getattr(transformers, TASK_AUTO[task])
    records = {l["module_path"]: l for l in lj["layers"]}

    # 2. keys
    try:
        m_orig, info_o = load(auto_cls, c.model)
    except Exception as e:
        c.report("keys", False, f"{TASK_AUTO[task]} cannot load the original {c.model}: {short(e)}",
                 "original does not load")
        c.skip_rest("the original does not load")
        return
    try:
        base, info_b = load(auto_cls, c.out)
        pm, peft_msgs = load_peft(base, c.out)
    except Exception as e:
        c.report("keys", False, f"loading OUT + PeftModel.from_pretrained failed: {short(e)}",
                 "does not load: " + short(e, 80))
        c.skip_rest("the PEFT model does not load")
        return
    problems = []
    for k in info_b:
        if info_b[k] != info_o[k]:
            problems.append(f"backbone {k} {some(info_b[k]) or 'none'} vs original's {some(info_o[k]) or 'none'}")
    problems += [f"PEFT warned: {m}" for m in peft_msgs]
    expect = {re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k) for k in file_keys}
    params = {n for n, _ in pm.named_parameters() if re.search(r"\.lora_[AB]\.default\.weight$", n)}
    if params - expect:
        problems.append(f"{len(params - expect)} LoRA tensors not in the adapter file (left at PEFT's "
                        f"init): {some(params - expect)}")
    if expect - params:
        problems.append(f"{len(expect - params)} adapter tensors the model has no place for: "
                        f"{some(expect - params)}")
    adapter = load_file(os.path.join(c.out, "loftq_init", "adapter_model.safetensors"))
    sd = pm.state_dict()
    changed = [k for k, v in adapter.items()
               if re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k) in sd
               and not torch.equal(sd[re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k)]
                                   .detach().cpu().to(v.dtype), v)]
    if changed:
        problems.append(f"{len(changed)} adapter tensors differ after loading: {some(changed)}")
    wrapped = wrapped_modules(pm)
    if set(wrapped) - set(records):
        problems.append(f"PEFT wraps {len(set(wrapped) - set(records))} modules loftq.json does not record: "
                        f"{some(set(wrapped) - set(records))}")
    if set(records) - set(wrapped):
        problems.append(f"{len(set(records) - set(wrapped))} recorded modules PEFT did not wrap: "
                        f"{some(set(records) - set(wrapped))}")
    pc = pm.peft_config.get("default")
    tt = getattr(pc, "task_type", None)
    tt = getattr(tt, "value", tt)
    mine = {"r": pc.r, "lora_alpha": pc.lora_alpha, "fan_in_fan_out": bool(pc.fan_in_fan_out),
            "task_type": tt, "target_modules": sorted(pc.target_modules or [])}
    theirs = {"r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "fan_in_fan_out": bool(cfg["fan_in_fan_out"]),
              "task_type": task, "target_modules": sorted(cfg["target_modules"])}
    for k in mine:
        if mine[k] != theirs[k]:
            problems.append(f"peft_config {k} {mine[k]!r} != adapter_config.json {theirs[k]!r}")
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    if trainable == 0:
        problems.append("no trainable parameter (is_trainable=True)")
    ok = not problems
    c.report("keys", ok,
             f"{len(params)} LoRA tensors loaded unchanged, {len(wrapped)} modules wrapped "
             f"({type(pm).__name__}), backbone missing/unexpected keys as the original's "
             f"({len(info_o['missing_keys'])}/{len(info_o['unexpected_keys'])})" if ok else "; ".join(problems),
             f"{len(params)} tensors" if ok else problems[0][:120])

    # 3. effective weights
    try:
        orig_mods = dict(m_orig.named_modules())
        worst, worst_name, over, n = 0.0, "", [], 0
        for path, m in sorted(wrapped.items()):
            rec = records.get(path)
            om = orig_mods.get(path)
            if rec is None or om is None or getattr(om, "weight", None) is None:
                over.append(f"{path}: no {'record' if rec is None else 'original module'}")
                continue
            w = om.weight.detach().double().cpu()
            q = m.get_base_layer().weight.detach().double().cpu()
            a = m.lora_A["default"].weight.detach().double().cpu()
            b = m.lora_B["default"].weight.detach().double().cpu()
            s = float(m.scaling["default"])
            fifo = bool(getattr(m, "fan_in_fan_out", False))
            delta = b @ a
            if fifo:
                delta = delta.T
            if fifo != bool(rec.get("conv1d")):
                over.append(f"{path}: PEFT fan_in_fan_out {fifo}, loftq.json conv1d {rec.get('conv1d')}")
                continue
            if delta.shape != q.shape or q.shape != w.shape:
                over.append(f"{path}: shapes W {list(w.shape)}, Q {list(q.shape)}, BA {list(delta.shape)}")
                continue
            err = ((w - (q + s * delta)).norm() / w.norm().clamp_min(1e-300)).item()
            gap = abs(err - rec["loftq_error"]) / rec["loftq_error"]
            n += 1
            if gap > worst:
                worst, worst_name = gap, path
            if gap > args.rel_tol or not err < rec["qlora_error"]:
                over.append(f"{path}: error {err:.6f}, loftq.json {rec['loftq_error']:.6f} "
                            f"(gap {gap:.1e}), qlora {rec['qlora_error']:.6f}")
        if n + len(over) < len(records):
            over.append(f"{len(records) - n - len(over)} recorded modules not wrapped by PEFT")
        ok = not over and n == len(records)
        c.report("effective_weights", ok,
                 f"{n} modules, worst relative gap to loftq_error {worst:.1e} ({worst_name}), all below "
                 f"qlora_error" if ok else f"{len(over)} of {len(wrapped)} off (tol {args.rel_tol:g}): "
                 + "; ".join(over[:3]),
                 f"{n}, gap ≤ {worst:.1e}" if ok else over[0][:120] if over else "no module", worst_gap=worst)
    except Exception as e:
        c.report("effective_weights", False, f"could not compute: {short(e)}")

    # 4. forward, float32
    hidden = bool(info_o["missing_keys"])
    what = "last hidden state (the original lacks " + some(info_o["missing_keys"], 2) + ")" if hidden \
        else ("classifier logits" if task == "SEQ_CLS" else "logits")
    try:
        inp = make_inputs(m_orig.get_input_embeddings().num_embeddings, task)
        y0 = forward(m_orig, inp, hidden, dev)
        y1 = forward(pm, inp, hidden, dev)
        with pm.disable_adapter():
            yq = forward(pm, inp, hidden, dev)
        e1, eq = rel(y1, y0), rel(yq, y0)
        ok = bool(torch.isfinite(y0).all()) and e1 == e1 and e1 < eq
        c.report("forward_fp32", ok, f"{what}: relative error LoftQ {e1:.4f} vs backbone alone {eq:.4f}",
                 f"{e1:.4f} vs {eq:.4f}", loftq=e1, backbone=eq)
    except Exception as e:
        y0, y1 = None, None
        c.report("forward_fp32", False, f"forward failed: {short(e)}")
    del pm, base
    gc.collect()

    # 5. NF4
    if args.no_nf4:
        c.report("nf4", None, "--no-nf4")
        return
    if dev != "cuda":
        c.report("nf4", None, "no CUDA device", "no CUDA")
        return
    if bnb is None:
        c.report("nf4", None, f"bitsandbytes not importable: {bnb_error}", "no bitsandbytes")
        return
    if y0 is None:
        c.report("nf4", None, "no fp32 reference output")
        return
    try:
        skip = lj.get("llm_int8_skip_modules") or []
        qkw = {"llm_int8_skip_modules": skip} if skip else {}  # [] would quantize the output head
        qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.float32, **qkw)
        base4, _ = load(auto_cls, c.out, quant=qc)
        pm4, msgs4 = load_peft(base4, c.out)
        mods = dict(pm4.named_modules())
        n4, bad = 0, []
        for name, m in mods.items():
            if isinstance(m, bnb.nn.Linear4bit):
                n4 += 1
                parent = mods.get(name[: -len(".base_layer")]) if name.endswith(".base_layer") else None
                if not (isinstance(parent, LoraLayer) and "default" in getattr(parent, "lora_A", {})):
                    bad.append(name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name)
        y4 = forward(pm4, inp, hidden, "cuda:0")
        with pm4.disable_adapter():
            y4q = forward(pm4, inp, hidden, "cuda:0")
        e4, e4q, e_same = rel(y4, y0), rel(y4q, y0), rel(y4, y1)
        problems = []
        if n4 == 0:
            problems.append("bitsandbytes quantized no module")
        if bad:
            problems.append(f"{len(bad)} quantized modules without LoRA: {some(bad)}")
        # A Conv1D quantized by bitsandbytes is a Linear4bit in (out, in): PEFT then ignores
        # fan_in_fan_out, so only the adapter-key warnings matter here.
        problems += [f"PEFT warned: {m}" for m in msgs4 if "adapter key" in m]
        if not e4 < e4q:
            problems.append(f"forward error {e4:.4f} not below the NF4 backbone's {e4q:.4f}")
        ok = not problems
        c.report("nf4", ok,
                 f"{n4} Linear4bit, all under LoRA; {what}: LoftQ {e4:.4f} vs NF4 backbone {e4q:.4f} "
                 f"(NF4 vs fp32 PEFT output {e_same:.1e})" if ok else "; ".join(problems),
                 f"{e4:.4f} vs {e4q:.4f}" if ok else problems[0][:120], loftq=e4, backbone=e4q,
                 vs_fp32=e_same, linear4bit=n4)
        del pm4, base4
    except Exception as e:
        c.report("nf4", False, f"NF4 load/forward failed: {short(e)}", "failed: " + short(e, 80))
    finally:
        gc.collect()
        torch.cuda.empty_cache()


nfail = 0
for lab, arch, model, out in cases:
    c = Case(lab, arch, model, out)
    t0 = time.time()
    try:
        run_case(c)
    except Exception as e:
        traceback.print_exc()
        c.report(next((n for n in CHECKS if n not in c.checks), "nf4"), False, f"crashed: {short(e)}")
        c.skip_rest("after a crash")
    failed = [n for n, v in c.checks.items() if v["ok"] is False]
    nfail += bool(failed)
    rec = {"label": lab, "arch": arch, "model": model, "out": out, "ok": not failed,
           "seconds": round(time.time() - t0, 2), "versions": versions, "checks": c.checks}
    print(f"arch: {lab} result: {'ok' if not failed else 'FAIL ' + ', '.join(failed)} "
          f"({rec['seconds']} s)", flush=True)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    gc.collect()
print(f"peft_arch_check: {len(cases) - nfail}/{len(cases)} architectures passed", flush=True)
sys.exit(1 if nfail else 0)
