"""Captions from Florence-2 (transformers' native `Florence2ForConditionalGeneration`), as the authors make them.

The paper's prompt is the concept token followed by a caption: of the input's first frame for training,
of the edited first frame for sampling. The authors caption with Florence-2-large's `<DETAILED_CAPTION>`
task, beam search of 3, and strip the leading "The image shows " (METHOD.md). Here the model comes from a
local folder in transformers' format (`config.json`, safetensors, the processor's and tokenizer's JSON:
the `florence-community` conversions; the original `microsoft/Florence-2-*` repos need their own remote
code and are refused). A caption is cached in the encoded cache (`cache.TensorCache`, kind "caption")
under the model's fingerprint, the generation settings and the image's exact pixels, so Florence-2 is
loaded only when a caption is missing, and the same frame is never captioned twice.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import hf_folder, media
from .cache import TensorCache, content_key

TASK = "<DETAILED_CAPTION>"
STRIP_PREFIX = "The image shows "  # the authors' post-processing
NUM_BEAMS = 3  # the authors'
MAX_NEW_TOKENS = 256  # Florence-2's detailed captions are 30-80 tokens
PROCESSOR_FILES = ("processor_config.json|preprocessor_config.json", "tokenizer.json|vocab.json")


OPTION = "--caption florence2:"


def folder_problems(path: Path) -> list[str]:
    return hf_folder.folder_problems(path, OPTION, "Florence-2", ("florence2",), PROCESSOR_FILES)


def clean_caption(text: str) -> str:
    """Florence-2's text as the prompt uses it: special tokens gone, "The image shows " stripped, one line."""
    text = " ".join(text.replace("<s>", " ").replace("</s>", " ").replace("<pad>", " ").split())
    if text.lower().startswith(STRIP_PREFIX.lower()):
        text = text[len(STRIP_PREFIX):]
    return text


class Florence2Captioner:
    """Captions images with a local Florence-2 folder; loads the model only when a caption is not cached."""

    def __init__(self, folder: Path, cache_dir: Path | None = None, device: str | None = None,
                 num_beams: int = NUM_BEAMS, max_new_tokens: int = MAX_NEW_TOKENS):
        hf_folder.check_folder(folder, OPTION, "Florence-2", ("florence2",), PROCESSOR_FILES)
        self.folder = Path(folder)
        self.cache = TensorCache(cache_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
        self.fingerprint = hf_folder.fingerprint(self.folder)
        self._model = None
        self._processor = None

    def caption(self, image: torch.Tensor) -> str:
        """[3, H, W] in [-1, 1] -> the cleaned caption (from the cache when this exact image was captioned)."""
        key = content_key("florence2-caption", self.fingerprint, TASK, self.num_beams, self.max_new_tokens, image)
        stored = self.cache.get_or_compute("caption", key, lambda: _text_tensor(self._generate(image)))
        return bytes(stored.tolist()).decode("utf-8")

    def free(self) -> None:
        """Drop the model (before the video model loads)."""
        self._model = self._processor = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _generate(self, image: torch.Tensor) -> str:
        from PIL import Image
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        if self._model is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self._model = hf_folder.load_model(Florence2ForConditionalGeneration, self.folder,
                                               dtype=dtype).to(self.device)
            self._processor = hf_folder.load_processor(Florence2Processor, self.folder)
        inputs = self._processor(text=TASK, images=Image.fromarray(media.to_uint8(image)), return_tensors="pt")
        ids = self._model.generate(input_ids=inputs["input_ids"].to(self.device),
                                   pixel_values=inputs["pixel_values"].to(self.device, self._model.dtype),
                                   num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, do_sample=False)
        return clean_caption(self._processor.batch_decode(ids, skip_special_tokens=True)[0])


def _text_tensor(text: str) -> torch.Tensor:
    """A string as a uint8 tensor, so the tensor cache can hold it."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)

