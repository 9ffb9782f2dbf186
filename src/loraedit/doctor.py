"""`loraedit doctor`: this machine as loraedit sees it, one row per fact, each with what it means for a run.

The first real run of a 14B model is the costly place to learn that torch was built without CUDA, that
flash-attn is missing, that the cache disk is nearly full or that PyAV cannot write H.264. Every row
here is read from the running environment (nothing is loaded, nothing is downloaded) and says what it
changes: which attention kernel `--attention auto` will pick, which `--memory-mode` the GPU needs, how
much pinned host memory offloading takes. The last line is the verdict in one sentence.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from dataclasses import asdict, dataclass

from . import __version__, devices, perfmodel
from .diskspace import nearest_existing

#: The versions constraints.txt pins (what the test suite ran with); tests/test_doctor.py keeps them equal.
TESTED_WITH = {"torch": "2.14.1", "diffusers": "0.42.1", "transformers": "5.24.0", "peft": "0.21.2",
               "safetensors": "0.8.0", "av": "18.1.0"}
GIB = 2**30
HOST_SLACK_GIB = 4.0  # the process itself, the encoders parked on the CPU, the decoded video


@dataclass(frozen=True)
class Row:
    item: str
    value: str
    meaning: str
    ok: bool = True  # False: this row limits what loraedit can do here


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _library_rows() -> list[Row]:
    rows = []
    for package, wanted in TESTED_WITH.items():
        found = _version(package)
        if found is None:
            rows.append(Row(package, "not installed", "required: reinstall loraedit (pip install -e .)", False))
            continue
        base = found.split("+")[0]
        rows.append(Row(package, found, "the tested version" if base == wanted else
                        f"tested with {wanted}; other versions usually work (WAN-NOTES lists what changed)"))
    return rows


def _gpu_rows(gpu: devices.Gpu | None) -> list[Row]:
    import torch

    cuda_build = torch.version.cuda
    rows = [Row("CUDA build", f"CUDA {cuda_build}" if cuda_build else "CPU-only torch",
                "torch can use an NVIDIA GPU" if cuda_build else
                "this torch cannot use a GPU: install a CUDA build of torch for Wan 14B", bool(cuda_build))]
    if gpu is None:
        why = "torch sees no CUDA device" if cuda_build else "CPU-only torch"
        rows.append(Row("GPU", f"none ({why})", "runs on the CPU: the toy models (--model toy) work; Wan2.1/2.2 "
                        "14B needs a CUDA GPU with 24 GB or more", False))
        rows.append(Row("bf16", "n/a (CPU)", "the CPU computes in float32 (the toy models are small enough)"))
        return rows
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    speed = (f"plan uses {gpu.spec.name}'s figures ({gpu.spec.bf16_flops / 1e12:.0f} TFLOP/s bf16)" if gpu.spec
             else "no speed figures for this card: plan checks its memory but gives no minutes")
    rows.append(Row("GPU", f"{gpu.name}, {gpu.total_gib:.1f} GiB, {gpu.free_gib:.1f} GiB free, sm_{major}{minor}",
                    speed))
    bf16 = torch.cuda.is_bf16_supported()
    rows.append(Row("bf16", "yes" if bf16 else "no", "base weights and compute are bf16 (LoRA fp32)" if bf16 else
                    "this GPU has no bf16: loraedit's GPU recipe needs it (Ampere or newer)", bf16))
    native = (major, minor) >= (8, 9)
    rows.append(Row("fp8", f"storage yes; native fp8 matmul {'yes' if native else 'no'} (sm_{major}{minor})",
                    "--memory-mode fp8 stores weights in float8 and computes in bf16 on any CUDA GPU; loraedit "
                    "does not use fp8 matmuls"))
    return rows


def _attention_row(gpu: devices.Gpu | None) -> Row:
    import torch
    from diffusers.utils import (is_flash_attn_3_available, is_flash_attn_available, is_sageattention_available,
                                 is_xformers_available)

    from .performance import resolve_attention

    found = [name for name, ok in (("flash-attn 2", is_flash_attn_available()),
                                   ("flash-attn 3", is_flash_attn_3_available()),
                                   ("sage", is_sageattention_available()), ("xformers", is_xformers_available()))
             if ok]
    device = torch.device("cuda" if gpu is not None else "cpu")
    train, sample = resolve_attention("auto", device, training=True), resolve_attention("auto", device)
    return Row("attention", ", ".join(["PyTorch SDPA", *found]),
               f"--attention auto trains with `{train}` and samples with `{sample}` here"
               + ("" if "flash-attn 2" in found or gpu is None else "; pip install flash-attn for faster training"))


def _machine_rows(cache_dir) -> list[Row]:
    import av
    import torch

    rows = [Row("CPU threads", f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})",
                "torch's threads; one job per core on a shared small machine (README: Development)")]
    dims = perfmodel.WanDims.from_config(perfmodel.WAN21_I2V_14B)
    params = perfmodel.parameter_counts(dims)
    bf16 = params["total"] * 2 / GIB
    fp8 = (params["fp8"] + (params["total"] - params["fp8"]) * 2) / GIB
    host = devices.host_available_gib()
    need = f"offloading pins Wan 14B's transformer in RAM: {fp8:.0f} GiB (fp8+offload), {bf16:.0f} GiB (offload)"
    if host is not None:
        fits = [mode for mode, size in (("fp8+offload", fp8), ("offload", bf16)) if host >= size + HOST_SLACK_GIB]
        need += f"; room here for {' and '.join(fits)}" if fits else "; too little here for either"
    rows.append(Row("host memory", "unknown" if host is None else f"{host:.1f} GiB available", need,
                    host is None or host >= fp8 + HOST_SLACK_GIB))
    from .cache import default_cache_dir

    cache = nearest_existing(cache_dir or default_cache_dir())
    free = shutil.disk_usage(cache).free / GIB
    rows.append(Row("cache disk", f"{free:.1f} GiB free at {cache}",
                    "a 49-frame 832x480 Wan edit caches about 0.1 GiB of latents and embeddings; each kept stage-1 "
                    "LoRA takes 0.3 GiB (--cache-dir moves them)", free >= 2))
    h264 = "libx264" in av.codecs_available
    rows.append(Row("video I/O", f"PyAV {av.__version__}, H.264 encoder {'yes' if h264 else 'missing'}",
                    "reads mp4/mov/webm/mkv, writes H.264 mp4" if h264 else
                    "loraedit writes H.264 mp4: install a PyAV wheel with libx264 (pip install --force-reinstall av)",
                    h264))
    return rows


def _extras_rows() -> list[Row]:
    gradio, ray = _version("gradio"), _version("ray")
    return [Row("ui extra", f"gradio {gradio}" if gradio else "not installed",
                "`loraedit ui` works" if gradio else "`loraedit ui` needs it: pip install 'loraedit[ui]'"),
            Row("ray", ray or "not installed", "`loraedit batch` works" if ray else
                "`loraedit batch` needs it: pip install 'loraedit[batch]'")]


def collect(device: str | None = None, cache_dir=None) -> list[Row]:
    """Every row, in the order they print. `device` as `--device` (default: cuda when available)."""
    gpu = devices.detect_gpu(device)
    return [Row("loraedit", f"{__version__} (Python {platform.python_version()})", "this checkout"),
            *_library_rows(), *_gpu_rows(gpu), _attention_row(gpu), *_machine_rows(cache_dir), *_extras_rows()]


def verdict(rows: list[Row]) -> str:
    """The one sentence that matters: what this machine can run."""
    gpu = next(r for r in rows if r.item == "GPU")
    if not gpu.ok:
        return ("no CUDA GPU here: loraedit runs on the CPU with the toy models only; Wan2.1/2.2 14B needs a CUDA "
                "GPU (`loraedit plan --model DIR --gpu rtx4090` shows what one would do)")
    limits = [r.item for r in rows if not r.ok]
    if limits:
        return f"a GPU is here, but {', '.join(limits)} limit what runs: see those rows"
    return "ready for Wan 14B: run `loraedit plan --model DIR` for the memory mode and the minutes"


def format_rows(rows: list[Row]) -> str:
    """An aligned three-column table (item, value, what it means) and the verdict."""
    width = [max(len(r.item) for r in rows), max(len(r.value) for r in rows)]
    lines = [f"{'':2}{'item':<{width[0]}}  {'value':<{width[1]}}  what it means for loraedit"]
    for r in rows:
        mark = "  " if r.ok else "! "
        lines.append(f"{mark}{r.item:<{width[0]}}  {r.value:<{width[1]}}  {r.meaning}")
    lines.append("")
    lines.append(f"verdict: {verdict(rows)}")
    return "\n".join(lines)


def as_json(rows: list[Row]) -> dict:
    return {"rows": [asdict(r) for r in rows], "verdict": verdict(rows)}
