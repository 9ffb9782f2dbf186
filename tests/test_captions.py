"""Florence-2 captions: a tiny random-weight model built from a config, the cache, the prompt rules, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraedit import api, captions
from loraedit.cli import main

from test_cli import FAST_SAMPLE, FAST_TRAIN, _clip_args


def write_tiny_florence2(folder: Path) -> Path:
    """A random-weight Florence-2 (DaViT + BART) with a byte-level tokenizer built offline, saved like a real folder.

    The tokenizer has one token per byte (no merges), so any text round-trips; the image processor makes
    16x16 inputs, i.e. (16/4)^2 + 1 = 17 image tokens for the one-stage DaViT.
    """
    from transformers import (CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, RobertaTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values(), "<mask>",
                                         "<image>"])}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    size = 16
    image_processor = CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False,
                                         crop_size={"height": size, "width": size}, image_seq_length=(size // 4) ** 2 + 1)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = Florence2Config(
        text_config={"model_type": "bart", "vocab_size": len(vocab), "max_position_embeddings": 512, "d_model": 16,
                     "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
                     "encoder_attention_heads": 2, "decoder_attention_heads": 2, "bos_token_id": 0, "pad_token_id": 1,
                     "eos_token_id": 2, "decoder_start_token_id": 2, "forced_bos_token_id": 0},
        vision_config={"depths": [1], "patch_size": [7], "patch_stride": [4], "patch_padding": [3],
                       "patch_prenorm": [False], "embed_dim": [16], "num_heads": [1], "num_groups": [1],
                       "window_size": 4, "projection_dim": 16},
        image_token_id=vocab["<image>"])
    torch.manual_seed(0)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def florence_dir(tmp_path_factory) -> Path:
    return write_tiny_florence2(tmp_path_factory.mktemp("models") / "florence2")


def test_clean_caption_strips_the_authors_prefix_and_special_tokens():
    assert captions.clean_caption("<s>The image shows a red car\n on a road.</s><pad>") == "a red car on a road."
    assert captions.clean_caption("the image shows a cat") == "a cat"
    assert captions.clean_caption("A dog. The image shows nothing else.") == "A dog. The image shows nothing else."


def test_captioner_runs_the_local_model_and_caches_by_image(florence_dir, toy_clip, tmp_path):
    cache = tmp_path / "cache"
    first = captions.Florence2Captioner(florence_dir, cache, "cpu")
    text = first.caption(toy_clip.video[0])
    assert isinstance(text, str) and "\n" not in text and "</s>" not in text
    assert first.caption(toy_clip.video[0]) == text  # deterministic (beam search, no sampling)
    assert len(list((cache / "caption").glob("*.safetensors"))) == 1

    again = captions.Florence2Captioner(florence_dir, cache, "cpu")
    def refuse(image):
        raise AssertionError("a cached caption must not run the model")

    again._generate = refuse
    assert again.caption(toy_clip.video[0]) == text
    assert again._model is None  # never loaded
    with pytest.raises(AssertionError, match="must not run"):
        again.caption(toy_clip.video[0].flip(-1))  # another image is another key


def test_caption_folder_problems_name_the_folder(florence_dir, tmp_path):
    assert captions.folder_problems(florence_dir) == []
    missing = captions.folder_problems(tmp_path / "nope")
    assert missing == [f"--caption florence2:{tmp_path / 'nope'} does not exist: give the local folder of the "
                       "Florence-2 model (save_pretrained layout)"]
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "florence2", "auto_map": {"AutoModel": "x.Y"}}')
    problems = captions.folder_problems(remote)
    assert any("auto_map" in p for p in problems) and any("no .safetensors" in p for p in problems)


def test_edit_with_captions_uses_them_unless_a_prompt_is_given(florence_dir, wan21_dir, clip_files, tmp_path, capsys):
    out = tmp_path / "cap" / "edit.mp4"
    code = main(["edit", *_clip_args(wan21_dir, clip_files, tmp_path), "--edited-first-frame",
                 str(clip_files["edited0"]), "--caption", f"florence2:{florence_dir}", "--out", str(out),
                 *FAST_TRAIN, "--stage1-steps", "2", *FAST_SAMPLE])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "caption of the input's first frame" in err and "caption of the edited first frame" in err
    assert len(list((tmp_path / "cache" / "caption").glob("*.safetensors"))) == 2
    # a user prompt overrides the sampling caption; the training caption now comes from the cache
    code = main(["sample", *_clip_args(wan21_dir, clip_files, tmp_path), "--edited-first-frame",
                 str(clip_files["edited0"]), "--caption", f"florence2:{florence_dir}", "--prompt", "a blue square",
                 "--lora", str(api.work_dir_for(out) / "lora.safetensors"), "--out", str(tmp_path / "s.mp4"),
                 *FAST_SAMPLE])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "caption of" not in err


def test_bad_caption_options_are_input_errors(wan21_dir, clip_files, tmp_path, capsys):
    base = ["train", *_clip_args(wan21_dir, clip_files, tmp_path), "--out", str(tmp_path / "l")]
    assert main([*base, "--caption", f"florence2:{tmp_path / 'nope'}"]) == 2
    assert f"--caption florence2:{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--caption", "blip:/models/blip"])
    assert exc.value.code == 2 and "is not florence2:DIR" in capsys.readouterr().err
