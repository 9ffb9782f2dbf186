"""DeQA-Score of videos, for `loraedit eval --deqa-json`: run in DeQA-Score's OWN environment, not loraedit's.

DeQA-Score (You et al. 2025; the LoRA-Edit paper's quality column, 3.8013 for LoRA-Edit) is an mPLUG-Owl2
fine-tune. Its model code needs transformers==4.36.1, which loraedit's environment cannot have, so this
script is not part of the package: loraedit never imports it, and its environment never imports loraedit.

Set up once (the model's code comes from the DeQA-Score repository you install, never from a hub):

    python3 -m venv ~/deqa-venv
    git clone https://github.com/zhiyuanyou/DeQA-Score ~/DeQA-Score
    ~/deqa-venv/bin/pip install -e ~/DeQA-Score av     # pins transformers 4.36.1; av reads the videos
    # the weights: a local copy of the zhiyuanyou/DeQA-Score-Mix3 folder, with .safetensors weights
    # (pickle .bin weights are refused; convert them once in that environment with
    #  model.save_pretrained(DIR, safe_serialization=True) if you trust the file)

Score, then merge:

    HF_HUB_OFFLINE=1 ~/deqa-venv/bin/python tools/deqa_score.py --model ~/models/DeQA-Score-Mix3 \\
        --every 4 --json deqa.json out/*.mp4
    loraedit eval --input clip.mp4 --output out/car.mp4 --mask masks/ --deqa-json deqa.json --json car.json

A video's score is the plain mean of the per-frame DeQA scores (1 = bad ... 5 = excellent) over every
`--every`-th frame (frame 0 included; `--every 1` scores all frames). Each frame is padded to a square
with the processor's mean colour and scored as DeQA-Score's own `Scorer` does: the softmax over the
logits of "excellent/good/fair/poor/bad" after "The quality of the image is", weighted 5..1.
Output JSON: {"scorer": "DeQA-Score", "model": DIR, "every": N, "videos": [{"path", "score", "frames",
"frame_scores"}]}; `loraedit eval` finds a video by its resolved path, else by a unique file name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROMPT = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
LEVELS = ("excellent", "good", "fair", "poor", "bad")  # weighted 5, 4, 3, 2, 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_frames(path: Path, every: int):
    """Every `every`-th frame of a video file or a folder of frames, as RGB PIL images."""
    from PIL import Image

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        return [Image.open(p).convert("RGB") for p in files[::every]]
    import av

    with av.open(str(path)) as container:
        return [frame.to_image() for i, frame in enumerate(container.decode(video=0)) if i % every == 0]


def expand_to_square(image, colour):
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


class DeqaScorer:
    """DeQA-Score's scorer, loading the local folder with safetensors only and the installed repository's code."""

    def __init__(self, model_dir: Path, device: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

        import src.model  # noqa: F401  (DeQA-Score's repository: registers the mplug_owl2 model classes)
        from src.constants import IMAGE_TOKEN_INDEX
        from src.mm_utils import tokenizer_image_token

        if not any(model_dir.glob("*.safetensors")):
            sys.exit(f"deqa_score: {model_dir} has no .safetensors weights (pickle weights are never opened): "
                     "use or convert to the safetensors release")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=False, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), torch_dtype=torch.float16, use_safetensors=True, local_files_only=True,
            low_cpu_mem_usage=True).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
        self.level_ids = [ids[1] for ids in self.tokenizer(list(LEVELS))["input_ids"]]
        self.weights = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float16, device=self.model.device)
        self.input_ids = tokenizer_image_token(PROMPT, self.tokenizer, IMAGE_TOKEN_INDEX,
                                               return_tensors="pt").unsqueeze(0).to(self.model.device)

    def __call__(self, images, batch: int = 8) -> list[float]:
        torch = self.torch
        colour = tuple(int(x * 255) for x in self.processor.image_mean)
        scores = []
        for start in range(0, len(images), batch):
            chunk = [expand_to_square(im, colour) for im in images[start:start + batch]]
            with torch.inference_mode():
                pixels = self.processor.preprocess(chunk, return_tensors="pt")["pixel_values"]
                pixels = pixels.half().to(self.model.device)
                logits = self.model(input_ids=self.input_ids.repeat(len(chunk), 1), images=pixels)["logits"]
                probs = torch.softmax(logits[:, -1, self.level_ids], dim=-1)
                scores += (probs @ self.weights).float().tolist()
        return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path, help="videos (mp4/...) or folders of frames")
    parser.add_argument("--model", type=Path, required=True, help="local DeQA-Score-Mix3 folder (safetensors)")
    parser.add_argument("--json", type=Path, required=True, help="output JSON for `loraedit eval --deqa-json`")
    parser.add_argument("--every", type=int, default=1, help="score every Nth frame (default 1: all)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, whatever the installed code asks
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    missing = [str(v) for v in args.videos if not v.exists()]
    if missing or args.every < 1 or not args.model.is_dir():
        sys.exit(f"deqa_score: check the inputs (missing: {missing or 'none'}; --every {args.every}; "
                 f"--model {args.model} is a folder: {args.model.is_dir()})")
    scorer = DeqaScorer(args.model, args.device)
    videos = []
    for path in args.videos:
        frame_scores = scorer(read_frames(path, args.every))
        if not frame_scores:
            sys.exit(f"deqa_score: {path} has no frames")
        videos.append({"path": str(path.resolve()), "score": sum(frame_scores) / len(frame_scores),
                       "frames": len(frame_scores), "frame_scores": frame_scores})
        print(f"{path}: DeQA {videos[-1]['score']:.4f} over {len(frame_scores)} frames", file=sys.stderr)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps({"scorer": "DeQA-Score", "model": str(args.model), "every": args.every,
                               "videos": videos}, indent=2))
    tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
