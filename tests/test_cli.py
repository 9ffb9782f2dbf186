"""End to end through the command line, on tiny Wan2.1 (with CLIP) and Wan2.2 (two experts) folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraedit import api, conditioning, media, report
from loraedit.backends import wan_layout
from loraedit.backends.wan import load_wan
from loraedit.cli import build_parser, main
from loraedit.errors import InputError

FAST = ["--frames", "9", "--size", "64x64", "--quiet"]
FAST_TRAIN = ["--stage1-steps", "4", "--stage2-steps", "3", "--rank", "4", "--lr", "1e-3", "--checkpoint-every", "2"]
FAST_SAMPLE = ["--steps", "3"]


def _clip_args(model_dir, files, tmp_path):
    return ["--model", str(model_dir), "--video", str(files["video"]), "--mask", str(files["mask"]),
            "--cache-dir", str(tmp_path / "cache"), *FAST]


def test_edit_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--video", "--mask", "--edited-first-frame", "--edited-frame", "--prompt", "--frames",
                   "--size", "--out", "--mode", "--low-cost", "--resume", "--steps", "--guidance", "--shift",
                   "--paste-background", "--config", "--rank", "--lr", "--mask-mode"):
        assert option in text, option
    sub = build_parser()._subparsers._group_actions[0].choices["edit"]
    undocumented = [a.dest for a in sub._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_edit_wan21_end_to_end(wan21_dir, clip_files, tmp_path):
    out = tmp_path / "result" / "edit.mp4"
    code = main(["edit", *_clip_args(wan21_dir, clip_files, tmp_path), "--edited-first-frame",
                 str(clip_files["edited0"]), "--out", str(out), "--prompt", "a blue square", *FAST_TRAIN, *FAST_SAMPLE])
    assert code == 0
    video, _ = media.read_video(out)
    assert video.shape == (9, 3, 64, 64)
    assert out.with_suffix(".contact.png").is_file()
    work = api.work_dir_for(out)
    assert (work / "lora.safetensors").is_file() and (work / "train_log.json").is_file()
    assert not list(out.parent.glob(".*tmp*"))  # no half-written files left
    info = json.loads((work / "train_info.json").read_text())
    assert info["frames"] == 9 and info["kind"] == "wan2.1-i2v"


def test_edit_wan22_with_an_edited_later_frame_and_low_cost(wan22_dir, clip_files, tmp_path):
    out = tmp_path / "edit22.mp4"
    code = main(["edit", *_clip_args(wan22_dir, clip_files, tmp_path), "--edited-first-frame",
                 str(clip_files["edited0"]), "--edited-frame", f"8:{clip_files['edited8']}",
                 "--edited-caption", "8:a flipped square seen later", "--low-cost",
                 "--low-cost-clip-frames", "5", "--out", str(out), *FAST_TRAIN, *FAST_SAMPLE])
    assert code == 0
    work = api.work_dir_for(out)
    assert (work / "lora.safetensors").is_file() and (work / "lora_2.safetensors").is_file()
    log = json.loads((work / "train_log.json").read_text())
    assert [(p["stage"], p["expert"]) for p in log["phases"]] == [
        (1, "transformer"), (2, "transformer"), (1, "transformer_2"), (2, "transformer_2")]
    assert media.read_video(out)[0].shape == (9, 3, 64, 64)
    settings = json.loads(report.result_paths(out)["metrics"].read_text())["settings"]
    assert settings["edited_frame_prompts"] == {"8": "p3rs0n, a flipped square seen later"}


def test_edited_captions_join_their_edited_frames_and_a_caption_of_no_frame_is_refused(capsys):
    from loraedit.cli.options import parse_edited_caption, with_edited_captions
    from loraedit.config import EditedFrame

    frames = (EditedFrame(8, Path("a.png")), EditedFrame(12, Path("b.png")))
    assert parse_edited_caption("8: a car: seen from behind") == (8, "a car: seen from behind")
    joined = with_edited_captions(frames, [(12, "the back")])
    assert [ef.caption for ef in joined] == [None, "the back"]
    with pytest.raises(InputError, match=r"--edited-caption 3:\.\.\. names no --edited-frame"):
        with_edited_captions(frames, [(3, "x")])
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, one line
        main(["edit", "--edited-caption", "eight:x"])
    assert exit_.value.code == 2
    assert "is not IDX:TEXT" in capsys.readouterr().err


def test_train_size_trains_the_motion_smaller_and_samples_at_the_working_size(wan21_dir, clip_files, tmp_path,
                                                                            monkeypatch):
    seen = []
    original = api.Encoder.sample

    def record(self, sample):
        seen.append((sample.name, tuple(sample.condition_video.shape[-2:])))
        return original(self, sample)

    monkeypatch.setattr(api.Encoder, "sample", record)
    out = tmp_path / "small.mp4"
    assert main(["edit", *_clip_args(wan21_dir, clip_files, tmp_path), "--edited-first-frame",
                 str(clip_files["edited0"]), "--edited-frame", f"8:{clip_files['edited8']}", "--train-size", "0.5",
                 "--out", str(out), *FAST_TRAIN, *FAST_SAMPLE]) == 0
    sizes = dict(seen)
    assert sizes["motion"] == (32, 32) and sizes["frame8"] == (64, 64)  # stage 2 keeps the working size
    assert media.read_video(out)[0].shape == (9, 3, 64, 64)
    settings = json.loads(report.result_paths(out)["metrics"].read_text())["settings"]
    assert settings["train_size"] == "32x32"


def test_one_lora_serves_many_edited_first_frames(wan21_dir, clip_files, toy_clip, tmp_path):
    lora_dir = tmp_path / "lora"
    assert main(["train", *_clip_args(wan21_dir, clip_files, tmp_path), "--out", str(lora_dir), *FAST_TRAIN]) == 0
    other = tmp_path / "other_edit.png"
    media.write_image(other, toy_clip.video[0].flip(0))  # a second, different edit of the same first frame
    outputs = []
    for i, edited in enumerate((clip_files["edited0"], other)):
        out = tmp_path / f"sample{i}.mp4"
        assert main(["sample", *_clip_args(wan21_dir, clip_files, tmp_path), "--edited-first-frame", str(edited),
                     "--lora", str(lora_dir / "lora.safetensors"), "--out", str(out), *FAST_SAMPLE]) == 0
        outputs.append(media.read_video(out)[0])
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("mode", ["no-lora", "mask-no-lora"])
def test_baseline_modes_without_training(wan21_dir, clip_files, tmp_path, mode):
    out = tmp_path / f"{mode}.mp4"
    assert main(["sample", *_clip_args(wan21_dir, clip_files, tmp_path), "--mode", mode, "--edited-first-frame",
                 str(clip_files["edited0"]), "--out", str(out), *FAST_SAMPLE]) == 0
    assert out.is_file()


def test_naive_mode_trains_on_the_standard_condition(wan21_dir, clip_files, tmp_path):
    out = tmp_path / "naive.mp4"
    assert main(["edit", *_clip_args(wan21_dir, clip_files, tmp_path), "--mode", "naive", "--edited-first-frame",
                 str(clip_files["edited0"]), "--out", str(out), *FAST_TRAIN, *FAST_SAMPLE]) == 0
    assert json.loads((api.work_dir_for(out) / "train_info.json").read_text())["mode"] == "naive"


def test_options_from_toml(wan21_dir, clip_files, tmp_path):
    config = tmp_path / "edit.toml"
    config.write_text(f'''
model = "{wan21_dir}"
video = "{clip_files['video']}"
mask = "{clip_files['mask']}"
edited-first-frame = "{clip_files['edited0']}"
frames = 9
size = "64x64"
mode = "mask-no-lora"
steps = 2
quiet = true
''')
    out = tmp_path / "toml.mp4"
    assert main(["sample", "--config", str(config), "--out", str(out)]) == 0
    assert media.read_video(out)[0].shape[0] == 9
    config.write_text('bogus_option = 3\n')
    assert main(["sample", "--config", str(config)]) == 2


def test_fast_preset_fills_what_the_user_and_the_config_file_leave_unset(tmp_path):
    from loraedit.cli import _apply_toml
    from loraedit.cli.options import FAST_PRESET

    clip = ["--video", "v.mp4", "--mask", "m.mp4"]

    def parsed(command, *argv):
        first = ["--edited-first-frame", "e.png"] if command != "train" else []
        return _apply_toml(build_parser(), [command, *first, *argv])

    plain, fast = parsed("edit", *clip), parsed("edit", *clip, "--fast")
    assert (plain.stage1_steps, plain.lr, plain.steps, plain.taylorseer) == (100, 1e-4, 30, 0)
    assert {k: getattr(fast, k) for k in FAST_PRESET} == FAST_PRESET
    assert parsed("edit", *clip, "--fast", "--steps", "20").steps == 20  # the command line wins
    config = tmp_path / "c.toml"
    config.write_text("steps = 25\nfast = true\n")
    from_file = parsed("edit", *clip, "--config", str(config))
    assert from_file.steps == 25 and from_file.stage1_steps == 50  # the file beats the preset, which it turned on
    train, sample = parsed("train", *clip, "--fast"), parsed("sample", *clip, "--fast")
    assert (train.stage1_steps, train.lr) == (50, 2e-4) and not hasattr(train, "steps")  # what each command has
    assert sample.steps == 15 and sample.taylorseer == 3 and not hasattr(sample, "stage1_steps")


def test_sampler_receives_the_mask_aware_condition(wan21_dir, toy_clip):
    """The pipeline's transformer input carries our keep mask (channels 16-19) and V_cond latents (20-35)."""
    backend = load_wan(wan21_dir)
    video, masks = toy_clip.video[:9], toy_clip.masks[:9]
    sample = conditioning.mask_aware_condition(video, masks, toy_clip.edited_first_frame, "x")
    condition = backend.condition_tensor(sample)
    seen = []
    backend.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"][0, 16:].clone()), with_kwargs=True)
    text = backend.encode_prompt("x")
    backend.generate(condition, sample.clip_image, text, text, backend.encode_image(sample.clip_image), steps=2,
                     guidance=2.0, shift=5.0, seed=0)
    assert len(seen) == 4  # 2 steps x (cond + uncond)
    expected_mask = wan_layout.latent_keep_mask(sample.keep_mask, 8, 4)
    assert torch.equal(seen[0][:4], expected_mask)
    assert expected_mask[:, 1:].min() == 0  # later frames really do ask for generation inside the mask
    torch.testing.assert_close(seen[0][4:], condition[4:])


@pytest.mark.parametrize("args, message", [
    (["--video", "missing.mp4"], "does not exist"),
    (["--frames", "10"], "4k+1"),
    (["--size", "60x64"], "multiple of 16"),
])
def test_bad_input_exits_2_with_one_line(wan21_dir, clip_files, tmp_path, capsys, args, message):
    base = dict(zip(["--model", "--video", "--mask"], [str(wan21_dir), str(clip_files["video"]),
                                                          str(clip_files["mask"])]))
    argv = ["sample", "--mode", "no-lora", "--edited-first-frame", str(clip_files["edited0"]), "--frames", "9",
            "--size", "64x64", "--quiet", "--cache-dir", str(tmp_path / "c")]
    for key, value in base.items():
        argv += [key, value]
    argv += args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_model_folder_is_a_clear_error(clip_files, tmp_path, capsys):
    code = main(["sample", "--model", str(tmp_path / "nope"), "--video", str(clip_files["video"]), "--mask",
                 str(clip_files["mask"]), "--edited-first-frame", str(clip_files["edited0"]), "--mode", "no-lora"])
    assert code == 2
    assert "model folder" in capsys.readouterr().err


def test_bench_quality_writes_every_mode(wan21_dir, tmp_path, capsys):
    """The bench's mechanics on one card scenario with the random tiny model (numbers meaningless)."""
    out = tmp_path / "results"
    code = main(["bench", "quality", "--model", str(wan21_dir), "--scenarios", "1", "--stage1-steps", "2",
                 "--stage2-steps", "2", "--rank", "4", "--steps", "2", "--out", str(out), "--json",
                 str(tmp_path / "q.json"), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "q.json").read_text())
    assert set(summary["modes"]) == {"no-lora", "mask-no-lora", "naive", "mask-aware", "mask-aware+frames",
                                     "low-cost", "mask-aware+paste", "codec-ceiling", "static-first-frame"}
    for row in summary["modes"].values():
        assert set(row) >= {"edit_psnr", "edit_ssim", "bg_psnr", "bg_ssim", "psnr", "temporal_err", "border_psnr"}
    pasted, plain = summary["modes"]["mask-aware+paste"], summary["modes"]["mask-aware"]
    assert pasted["bg_psnr"] > plain["bg_psnr"] and pasted["edit_psnr"] == plain["edit_psnr"]
    assert summary["scenarios"][0]["card"] is True
    assert (out / "table.md").is_file() and (out / "chart.png").is_file()
    assert len(list((out / "sheets").glob("*.png"))) == 1
    config = json.loads((out / "quality.json").read_text())["config"]  # the settings used, written down
    assert (config["train"]["learning_rate"], config["train"]["timestep_sampling"]) == (1e-3, "shifted")
    assert config["guidance"] == 5.0  # a Wan folder without its own CFG: the authors' 5
    assert config["level"] == 3  # ... and without a toy-world level: the first world's


def test_bench_quality_runs_only_the_modes_asked_for(wan21_dir, tmp_path, capsys):
    code = main(["bench", "quality", "--model", str(wan21_dir), "--scenarios", "1", "--stage1-steps", "2",
                 "--rank", "4", "--steps", "2", "--modes", "naive,mask-aware", "--timestep-sampling",
                 "logit-normal", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "q.json"), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "q.json").read_text())
    assert set(summary["modes"]) == {"naive", "mask-aware"}
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "quality", "--modes", "mask-aware,magic"])
    assert exit_info.value.code == 2
    assert "unknown mode(s) magic" in capsys.readouterr().err


def test_bench_quality_resumes_after_its_last_finished_scenario(wan21_dir, tmp_path, capsys):
    """A long bench killed part way keeps what it finished: each scenario's numbers are saved as it ends,
    and a rerun with the same settings and model reuses them (more scenarios only adds the new ones)."""
    out, common = tmp_path / "r", ["bench", "quality", "--model", str(wan21_dir), "--stage1-steps", "2", "--rank",
                                  "4", "--steps", "2", "--modes", "naive", "--out", str(tmp_path / "r")]
    assert main(common + ["--scenarios", "1"]) == 0
    saved = json.loads(next((out / "scenarios").glob("*.json")).read_text())
    assert saved["settings"]["model"] and "scenarios" not in saved["settings"]
    first = json.loads((out / "quality.json").read_text())["scenarios"][0]
    capsys.readouterr()
    assert main(common + ["--scenarios", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] seed 1000000: done earlier" in printed and "[2/2] seed 1000001: mask-aware edit" in printed
    again = json.loads((out / "quality.json").read_text())["scenarios"]
    assert again[0] == first and len(again) == 2 and len(list((out / "scenarios").glob("*.json"))) == 2
    assert main(common + ["--scenarios", "1", "--lr", "5e-4"]) == 0  # other settings: computed afresh
    assert "done earlier" not in capsys.readouterr().out
