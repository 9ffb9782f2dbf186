"""`loraedit eval`: CLIP metrics (a tiny random CLIP built from a config), pixel metrics, alignment, suite, DeQA."""

from __future__ import annotations

import json
import py_compile
import re
import shutil
from pathlib import Path

import pytest
import torch

from loraedit import evaluate, media, metrics
from loraedit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_clip(folder: Path) -> Path:
    """A random-weight CLIP in openai/clip-vit-large-patch14's folder layout (CLIPModel + preprocessor), 32 px."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8}, projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("models") / "clip")


# ---- the metrics as defined ---------------------------------------------------------------------------


def test_clip_metrics_average_the_cosines_over_the_scored_frames():
    e = torch.eye(4)
    output = torch.stack([e[0], e[0], e[1], e[1]])  # frames 0-3
    source = torch.stack([e[0], e[0], e[0], e[1]])
    edited = e[0]
    m = evaluate.clip_metrics(output, source, edited, evaluate.scored_frames("after-first", 4))
    assert m["clip_score"] == pytest.approx(1 / 3)  # frames 1, 2, 3: cos 1, 0, 0
    assert m["input_similarity"] == pytest.approx(2 / 3)  # frames 1, 2, 3: 1, 0, 1
    assert m["temporal_consistency"] == pytest.approx(1 / 2)  # pairs (1,2): 0, (2,3): 1
    m = evaluate.clip_metrics(output, source, edited, evaluate.scored_frames("all", 4))
    assert m["clip_score"] == pytest.approx(2 / 4) and m["temporal_consistency"] == pytest.approx(2 / 3)


def test_background_metrics_ignore_the_edit_region(toy_clip):
    video, masks = toy_clip.video, toy_clip.masks
    edited = torch.where(masks.bool()[:, None], -video, video)  # change only inside the mask
    m = evaluate.pixel_metrics(edited, video, masks, reference=edited)
    assert m["bg_psnr"] == pytest.approx(100.0)
    # SSIM's 7x7 window sees the edit from background pixels next to it, so only near 1 (and above the frame's)
    assert 0.85 < m["bg_ssim"] < 1 and m["bg_ssim"] > metrics.masked_ssim(edited[1:], video[1:])
    assert m["ref_psnr"] == pytest.approx(100.0) and m["ref_edit_psnr"] == pytest.approx(100.0)
    assert evaluate.pixel_metrics(edited, video, None) == {}


def test_inputs_are_fitted_to_the_outputs_frames_like_edit_does(toy_clip):
    fitted = evaluate.fit_to(toy_clip.video, 9, (32, 32), "--input x")
    assert torch.allclose(fitted, media.prepare_video(toy_clip.video, 9, (32, 32)))
    with pytest.raises(Exception, match="not 4k\\+1"):
        evaluate.fit_to(toy_clip.video, 8, (32, 32), "--input x")


# ---- loraedit eval ------------------------------------------------------------------------------------


def _write(root: Path, toy_clip, frames: int = 9) -> dict[str, Path]:
    """An input (17 frames, 64 px), an "output" (the input at 9 frames, 48 px), masks, edited first frame."""
    files = {"input": root / "source.mp4", "output": root / "out.mp4", "mask": root / "mask",
             "edited": root / "edited" / "e0.png"}
    media.write_video(files["input"], toy_clip.video, fps=16)
    media.write_video(files["output"], media.prepare_video(toy_clip.video, frames, (48, 48)), fps=8)
    for t in range(toy_clip.masks.shape[0]):
        media.write_image(files["mask"] / f"{t:03d}.png", toy_clip.masks[t])
    media.write_image(files["edited"], toy_clip.edited_first_frame)
    return files


def test_eval_command_writes_every_metric_and_its_settings(clip_dir, toy_clip, tmp_path, capsys):
    files = _write(tmp_path, toy_clip)
    deqa = tmp_path / "deqa.json"
    deqa.write_text(json.dumps({"scorer": "DeQA-Score", "videos": [{"path": str(files["output"]), "score": 3.5}]}))
    out_json = tmp_path / "metrics.json"
    code = main(["eval", "--input", str(files["input"]), "--output", str(files["output"]), "--mask",
                 str(files["mask"]), "--edited-first-frame", str(files["edited"]), "--reference", str(files["output"]),
                 "--clip", str(clip_dir), "--deqa-json", str(deqa), "--json", str(out_json), "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out_json.read_text())
    m = result["metrics"]
    # the output is the input re-encoded: the background matches (up to H.264), the frames match the input
    assert m["input_similarity"] > 0.98 and m["bg_psnr"] > 30 and m["ref_psnr"] > 90
    assert -1 <= m["clip_score"] <= 1 and -1 <= m["temporal_consistency"] <= 1 and m["deqa"] == 3.5
    s = result["settings"]
    assert s["frame_set"] == "after-first" and s["frames_scored"] == list(range(1, 9))
    assert "mean" in s["averaging"] and s["clip_model"] == str(clip_dir) and "L2-normalised" in s["clip_embedding"]
    assert "| clip_score |" in capsys.readouterr().out


def test_eval_reports_every_problem_at_once(clip_dir, toy_clip, tmp_path, capsys):
    files = _write(tmp_path, toy_clip)
    shutil.rmtree(files["mask"])
    files["mask"].mkdir()
    media.write_image(files["mask"] / "only.png", toy_clip.masks[0])
    code = main(["eval", "--input", str(tmp_path / "nope.mp4"), "--output", str(files["output"]), "--mask",
                 str(files["mask"]), "--clip", str(tmp_path / "noclip"), "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and "problems" in err
    assert "nope.mp4 does not exist" in err and f"--clip {tmp_path / 'noclip'} does not exist" in err
    assert main(["eval", "--output", str(files["output"])]) == 2
    assert "needs --input, --mask" in capsys.readouterr().err


def test_eval_suite_scores_every_case_and_lists_missing_outputs(clip_dir, toy_clip, tmp_path, capsys):
    suite = tmp_path / "suite"
    for case in ("bear", "car"):
        files = _write(suite / case, toy_clip)
        (suite / case / "outputs").mkdir()
        if case == "bear":
            files["output"].rename(suite / case / "outputs" / "e0.mp4")
        else:
            files["output"].unlink()
    out_json = tmp_path / "suite.json"
    assert main(["eval", "--suite", str(suite), "--clip", str(clip_dir), "--json", str(out_json), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| bear/e0 |" in table and "| car/e0 | missing:" in table and "**mean**" in table and "(n=1)" in table
    result = json.loads(out_json.read_text())
    assert [r["case"] for r in result["rows"]] == ["bear/e0", "car/e0"]
    assert result["mean"]["clip_score"] == pytest.approx(result["rows"][0]["clip_score"])
    assert "each edit weighs the same" in result["settings"]["suite_averaging"]


def test_deqa_tool_compiles_and_is_not_part_of_the_package():
    py_compile.compile(str(ROOT / "tools" / "deqa_score.py"), doraise=True)
    imports = re.compile(r"^\s*(import|from)\s+\S*deqa", re.M)
    assert not [p for p in (ROOT / "src" / "loraedit").rglob("*.py") if imports.search(p.read_text())]
