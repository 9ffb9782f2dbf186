"""GPU benchmark of the real Wan2.1-I2V-14B architecture (random weights): s/step and peak memory per memory mode.

For each memory mode (full, fp8, offload, fp8+offload) and clip (49x480x832, 81x480x832): one LoRA
training step as `loraedit.train` runs it (rank 16 on the authors' targets, fp32 LoRA, bf16 autocast,
gradient checkpointing on every block, fused AdamW, the attention backend `auto` picks) and one sampling
step (the transformer on the batch [cond; uncond], as batched CFG runs it), each timed after a warm-up
step, with the CUDA peak allocation beside the value `loraedit.perfmodel` predicts. In the full mode the
training step is measured again with `--keep-attention` (selective checkpointing).

GPU time comes in short windows, so everything runs in one go under a time budget (`--budget-s`, default
480 s; what does not fit is reported as skipped), the 14B weights are built on the GPU (meta-device
construction, then allocation and a seeded random fill there: a CPU init of 16B parameters alone takes
minutes) and moved to the CPU only for the offload modes. Results are printed as JSON, written to
`$OUT/gpu.json` when $OUT is set, and appended to docs/PERFORMANCE.md (`--doc`) with the date and device.

`python bench/gpu.py --tiny --device cpu` runs the same code on a tiny config in seconds (a test does), so
nothing fails on the GPU for a typo.

`python bench/gpu.py --model DIR` is the first thing to run on a GPU with a downloaded model folder: it loads
the folder's own transformer weights in the memory mode `loraedit plan` picks for this GPU, runs two
training and two sampling steps at 49 frames and the folder's working size, and prints measured against
modelled (seconds per step, peak GiB) as ratios. A ratio far from 1 is what to fix in perfmodel.py before
trusting `plan` (and the refusal before `edit`) on that card.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loraedit import devices, lora_io, perfmodel, plan  # noqa: E402
from loraedit.backends.wan import DEFAULT_LORA_TARGETS  # noqa: E402
from loraedit.backends.wan_folder import read_wan_folder  # noqa: E402
from loraedit.performance import (  # noqa: E402
    MEMORY_MODES,
    PerformanceConfig,
    configure_transformer,
    resolve_attention,
    set_attention,
    set_gradient_checkpointing,
)
from loraedit.train import flow_matching_loss  # noqa: E402

TINY = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 36,
        "out_channels": 16, "text_dim": 32, "freq_dim": 64, "ffn_dim": 64, "num_layers": 2, "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 8, "added_kv_proj_dim": 32,
        "rope_max_seq_len": 32}
CLIPS_14B = ((49, 480, 832), (81, 480, 832))
CLIPS_TINY = ((5, 32, 48), (9, 32, 48))


# ---- building the model where it computes ---------------------------------------------------------------


def meta_transformer(config: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer on the meta device (no memory) with the dtypes `from_pretrained(torch_dtype=dtype)`
    gives: `dtype`, except the modules Wan keeps in fp32. Dtypes are set here, before any allocation:
    an fp32 allocation of 16B parameters would not fit an 80 GB GPU."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    keep = tuple(model._keep_in_fp32_modules or ())
    model.to(dtype)
    for name, module in model.named_modules():
        if name and any(part in keep for part in name.split(".")):
            module.float()
    for table in [model.scale_shift_table, *(block.scale_shift_table for block in model.blocks)]:
        table.data = table.data.float()
    return model


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The Wan transformer from its config: constructed on the meta device, allocated on `device`, then
    filled there with seeded random values (weights N(0, 0.02), norm scales 1, biases 0). Modules Wan
    keeps in fp32 when loaded in bf16 (`_keep_in_fp32_modules`) stay fp32, as `from_pretrained` does."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    model = meta_transformer(config, dtype).to_empty(device=device)
    with torch.device(device):  # the rotary tables are buffers computed at construction: build them for real
        model.rope = WanRotaryPosEmbed(config["attention_head_dim"], tuple(config["patch_size"]),
                                       config["rope_max_seq_len"])
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith("scale_shift_table"):
                p.normal_(0.0, 0.02, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model.requires_grad_(False).eval()


def prepare(config: dict, mode: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A model in `mode`: built on the device (fp8 cast there), moved to the CPU first for offload modes."""
    model = build_transformer(config, device, dtype)
    perf = PerformanceConfig(memory_mode=mode)
    if perf.fp8_base:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        perf = PerformanceConfig(memory_mode="offload" if perf.offload else "full")  # storage done, placement left
    if perf.offload:
        model.to("cpu")
    configure_transformer(model, perf, device, dtype)
    return model


# ---- the measurements -------------------------------------------------------------------------------------


def _image_tokens(config: dict) -> int:
    """CLIP tokens of the random-weight runs: ViT-H/14's 257 for the 14B config, 5 for the tiny one."""
    return perfmodel.CLIP_TOKENS_14B if config["num_attention_heads"] >= 40 else 5


def inputs_for(config: dict, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype,
               batch: int = 1, image_tokens: int | None = None) -> dict:
    g = torch.Generator(device).manual_seed(1)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    image_tokens = _image_tokens(config) if image_tokens is None else image_tokens
    out = {"hidden_states": torch.randn(batch, 36, t, h, w, generator=g, device=device, dtype=dtype),
           "timestep": torch.full((batch,), 500.0, device=device),
           "encoder_hidden_states": torch.randn(batch, 512, config["text_dim"], generator=g, device=device,
                                                dtype=dtype),
           "return_dict": False}
    if config.get("image_dim"):
        out["encoder_hidden_states_image"] = torch.randn(batch, image_tokens, config["image_dim"], generator=g,
                                                         device=device, dtype=dtype)
    return out


class Memory:
    """Peak memory of a measurement: CUDA's allocator peak, or the process's RSS high-water mark on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def train_steps(model, config, clip, device, dtype, memory: Memory, timed: int = 1,
                keep_attention: bool = False, image_tokens: int | None = None) -> dict:
    """A LoRA step as loraedit.train runs it: warm-up, then `timed` steps; s/step and peak memory."""
    if _has_lora(model):
        lora_io.remove_lora(model)
    torch.manual_seed(0)
    lora_io.add_lora(model, lora_io.LoraSettings(16, 16.0, DEFAULT_LORA_TARGETS, "bench", "wan2.1-i2v"),
                     dtype=torch.float32, device=device)
    set_gradient_checkpointing(model, None, keep_attention)
    set_attention(model, PerformanceConfig(), device, training=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01, fused=device.type == "cuda")
    inputs = inputs_for(config, *clip, device, dtype, image_tokens=image_tokens)
    x0 = torch.randn(inputs["hidden_states"][:, :16].shape, device=device, dtype=torch.float32)
    noise = torch.randn_like(x0)
    sigma = 0.5
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times, loss = [], None
    memory.reset()
    for i in range(1 + timed):
        memory.sync()
        start = time.perf_counter()
        noisy = ((1 - sigma) * x0 + sigma * noise).to(dtype)
        hidden = torch.cat([noisy, inputs["hidden_states"][:, 16:]], dim=1)
        with autocast:
            pred = model(**dict(inputs, hidden_states=hidden))[0]
        loss = flow_matching_loss(pred, x0, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        memory.sync()
        if i:
            times.append(time.perf_counter() - start)
    result = {"s_per_step": sum(times) / len(times), "peak_gib": memory.peak_gib(), "loss": float(loss)}
    del optimizer, params
    model.eval()
    return result


@torch.no_grad()
def sample_steps(model, config, clip, device, dtype, memory: Memory, timed: int = 1,
                 image_tokens: int | None = None) -> dict:
    """One denoising step with batched CFG: the transformer on a batch of 2 (cond and uncond)."""
    inputs = inputs_for(config, *clip, device, dtype, batch=2, image_tokens=image_tokens)
    set_attention(model, PerformanceConfig(), device, training=False)
    times = []
    memory.reset()
    for i in range(1 + timed):
        memory.sync()
        start = time.perf_counter()
        model(**inputs)
        memory.sync()
        if i:
            times.append(time.perf_counter() - start)
    return {"s_per_step": sum(times) / len(times), "peak_gib": memory.peak_gib()}


def keep_attention_steps(*args, **kwargs) -> dict:
    """`train_steps` with `--keep-attention` (checkpointed blocks keep their self-attention output)."""
    return train_steps(*args, keep_attention=True, **kwargs)


def modelled(config: dict, clip, mode: str) -> dict:
    dims = perfmodel.WanDims.from_config(config)
    frames, height, width = clip
    tokens = perfmodel.video_tokens(dims, frames, height, width)
    image_tokens = perfmodel.CLIP_TOKENS_14B if config["num_attention_heads"] >= 40 else 5
    c = perfmodel.Clip(tokens, image_tokens=image_tokens, rank=16)
    return {"tokens": tokens, "train_peak_gib": perfmodel.train_step_memory(dims, c, mode)["peak"],
            "keep_attention_peak_gib": perfmodel.train_step_memory(dims, c, mode, keep_attention=True)["peak"],
            "sample_peak_gib": perfmodel.sample_step_memory(dims, c, mode)["peak"],
            "train_pflop": perfmodel.train_step_flops(dims, c)["total"] / 1e15,
            "sample_pflop": perfmodel.sample_step_flops(dims, c) / 1e15}


# ---- a real model folder: measured against modelled ---------------------------------------------------------


def load_transformer(model_dir: Path, mode: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The folder's own transformer weights (safetensors only, nothing from a hub) in memory mode `mode`."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(str(model_dir / "transformer"), torch_dtype=dtype,
                                                  use_safetensors=True, local_files_only=True)
    configure_transformer(model.requires_grad_(False).eval(), PerformanceConfig(memory_mode=mode), device, dtype)
    return model


def check_folder(model_dir: Path, device: torch.device, dtype: torch.dtype, frames: int = 49,
                 mode: str | None = None) -> dict:
    """Two training and two sampling steps of the folder's transformer in the mode plan picks, against the model.

    The modelled numbers are perfmodel's for one transformer (what is measured here); `loraedit plan` adds
    Wan2.2's second expert on top of them.
    """
    folder = read_wan_folder(model_dir)
    config = folder.transformer_configs["transformer"]
    width, height = folder.working_size
    gpu = devices.detect_gpu(str(device)) if device.type == "cuda" else None
    picked = plan.plan_run(folder, plan.RunShape(frames, (width, height)), gpu).pick if gpu else None
    mode = mode or (picked.mode if picked else "full" if device.type == "cpu" else "fp8+offload")
    started = time.perf_counter()
    model = load_transformer(folder.path, mode, device, dtype)
    load_s = time.perf_counter() - started
    clip, memory = (frames, height, width), Memory(device)
    train = train_steps(model, config, clip, device, dtype, memory, image_tokens=folder.image_tokens)
    sample = sample_steps(model, config, clip, device, dtype, memory, image_tokens=folder.image_tokens)
    dims = perfmodel.WanDims.from_folder(folder)
    size = perfmodel.Clip(perfmodel.video_tokens(dims, frames, height, width), image_tokens=folder.image_tokens)
    params = perfmodel.parameter_counts(dims)
    weights = params["fp8"] * (1 if "fp8" in mode else 2) + (params["total"] - params["fp8"]) * 2
    spec = gpu.device if gpu is not None else None
    offload = "offload" in mode
    modelled_ = {
        "train_s": perfmodel.step_seconds(perfmodel.train_step_flops(dims, size)["total"], spec,
                                          3 * weights if offload else 0) if spec else None,
        "train_gib": perfmodel.train_step_memory(dims, size, mode)["peak"],
        "sample_s": perfmodel.step_seconds(perfmodel.sample_step_flops(dims, size), spec,
                                           weights if offload else 0) if spec else None,
        "sample_gib": perfmodel.sample_step_memory(dims, size, mode)["peak"]}
    measured = {"train_s": train.get("s_per_step"), "train_gib": train.get("peak_gib"),
                "sample_s": sample.get("s_per_step"), "sample_gib": sample.get("peak_gib")}
    ratios = {k: round(measured[k] / modelled_[k], 3) if measured[k] and modelled_[k] else None for k in measured}
    return {"model": str(folder.path), "kind": folder.kind, "mode": mode, "picked_by_plan": picked is not None,
            "device": device_name(device), "clip": "x".join(map(str, clip)), "load_s": round(load_s, 1),
            "train": train, "sample": sample, "modelled": modelled_, "measured_over_modelled": ratios}


def format_check(result: dict) -> str:
    lines = [f"{result['model']} ({result['kind']}) on {result['device']}, --memory-mode {result['mode']}"
             f"{' (plan' + chr(39) + 's pick)' if result['picked_by_plan'] else ''}, clip {result['clip']}, "
             f"loaded in {result['load_s']} s",
             "| | measured | modelled | measured / modelled |", "|---|---|---|---|"]
    for key, label in (("train_s", "train s/step"), ("train_gib", "train peak GiB"), ("sample_s", "sample s/step"),
                       ("sample_gib", "sample peak GiB")):
        m = result["measured_over_modelled"][key]
        source = result["train" if key.startswith("train") else "sample"]
        value = source.get("s_per_step" if key.endswith("_s") else "peak_gib", source.get("error"))
        modelled_ = result["modelled"][key]
        lines.append(f"| {label} | {value if isinstance(value, str) else f'{value:.2f}'} | "
                     f"{'-' if modelled_ is None else f'{modelled_:.2f}'} | {'-' if m is None else m} |")
    return "\n".join(lines)


def run(config: dict, clips, modes, device: torch.device, dtype: torch.dtype, budget_s: float,
        out_json: Path | None) -> dict:
    started = time.perf_counter()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device_name(device),
               "torch": torch.__version__, "attention": {"train": resolve_attention("auto", device, training=True),
                                                           "sample": resolve_attention("auto", device)},
               "parameters": perfmodel.parameter_counts(perfmodel.WanDims.from_config(config))["total"],
               "runs": []}
    for mode in modes:
        if time.perf_counter() - started > budget_s:
            results["runs"].append({"mode": mode, "skipped": "time budget"})
            continue
        model = None
        try:
            build = time.perf_counter()
            model = prepare(config, mode, device, dtype)
            built_s = time.perf_counter() - build
            memory = Memory(device)
            for clip in clips:
                row = {"mode": mode, "clip": "x".join(map(str, clip)), "build_s": round(built_s, 1),
                       "modelled": modelled(config, clip, mode)}
                if time.perf_counter() - started > budget_s:
                    row["skipped"] = "time budget"
                else:
                    measurements = [("train", train_steps), ("sample", sample_steps)]  # sampling with the LoRA
                    if mode == "full":
                        measurements.append(("train_keep_attention", keep_attention_steps))
                    for what, fn in measurements:
                        try:
                            row[what] = fn(model, config, clip, device, dtype, memory)
                        except Exception as exc:  # out of memory, or a kernel missing here: record, go on
                            row[what] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"}
                        gc.collect()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    if _has_lora(model):
                        lora_io.remove_lora(model)
                results["runs"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                _write(out_json, results)
        except Exception as exc:  # one broken mode must not cost the others their window
            results["runs"].append({"mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        finally:
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["seconds"] = round(time.perf_counter() - started, 1)
    _write(out_json, results)
    return results


def _has_lora(model) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def _write(path: Path | None, results: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"CPU ({torch.get_num_threads()} threads)"


def markdown(results: dict, tiny: bool) -> str:
    title = "tiny config, CPU (a code check, not a measurement of Wan)" if tiny else "Wan2.1-I2V-14B, random weights"
    lines = [f"### Measured {results['date']} on {results['device']}: {title}", "",
             f"torch {results['torch']}, attention `{results['attention']['train']}` (training), "
             f"`{results['attention']['sample']}` (sampling), "
             f"{results['parameters']:,} transformer parameters, LoRA rank 16, checkpointing every block.", "",
             "| mode | clip | train s/step | train peak GiB (modelled) | sample s/step (batch 2) | "
             "sample peak GiB (modelled) |", "|---|---|---|---|---|---|"]
    for row in results["runs"]:
        if "clip" not in row:
            lines.append(f"| {row['mode']} | - | {row.get('skipped') or row.get('error')} | | | |")
            continue
        if "skipped" in row:
            lines.append(f"| {row['mode']} | {row['clip']} | skipped ({row['skipped']}) | | | |")
            continue
        t, s, m = row["train"], row["sample"], row["modelled"]
        cell = lambda r, key: r.get("error") or f"{r[key]:.2f}"  # noqa: E731
        lines.append(f"| {row['mode']} | {row['clip']} | {cell(t, 's_per_step')} | "
                     f"{cell(t, 'peak_gib')} ({m['train_peak_gib']:.1f}) | {cell(s, 's_per_step')} | "
                     f"{cell(s, 'peak_gib')} ({m['sample_peak_gib']:.1f}) |")
        if "train_keep_attention" in row:
            k = row["train_keep_attention"]
            lines.append(f"| {row['mode']}, --keep-attention | {row['clip']} | {cell(k, 's_per_step')} | "
                         f"{cell(k, 'peak_gib')} ({m['keep_attention_peak_gib']:.1f}) | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny config at tiny clips (a code check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default=",".join(MEMORY_MODES), help="comma-separated memory modes")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting measurements after this")
    parser.add_argument("--json", type=Path, help="results JSON (default: $OUT/gpu.json when $OUT is set)")
    parser.add_argument("--doc", type=Path, help="append the markdown table to this file (e.g. docs/PERFORMANCE.md)")
    parser.add_argument("--model", type=Path, help="a downloaded model folder: load its transformer, run 2+2 steps "
                        "at 49 frames in the mode plan picks, print measured / modelled")
    parser.add_argument("--mode", help="with --model: this memory mode instead of plan's pick")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model is not None:
        result = check_folder(args.model, device, dtype, mode=args.mode)
        print(format_check(result))
        print(json.dumps(result))
        out_json = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
        _write(out_json, result)
        return result
    config, clips = (TINY, CLIPS_TINY) if args.tiny else (perfmodel.WAN21_I2V_14B, CLIPS_14B)
    out_json = args.json or (Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else None)
    results = run(config, clips, args.modes.split(","), device, dtype, args.budget_s, out_json)
    table = markdown(results, args.tiny)
    print(table)
    print(json.dumps(results))
    if args.doc:
        with args.doc.open("a") as f:
            f.write("\n" + table)
        if os.environ.get("OUT"):
            (Path(os.environ["OUT"]) / "gpu.md").write_text(table)
    return results


if __name__ == "__main__":
    main()
