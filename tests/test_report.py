"""What a person sees: side-by-side video, metrics JSON, the HTML report with its SVG loss curve, from a real edit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import torch

from loraedit import api, media, report
from loraedit.cli import main

from test_cli import FAST_SAMPLE, FAST_TRAIN, _clip_args

SVG = "{http://www.w3.org/2000/svg}"


def test_side_by_side_puts_input_left_and_output_right():
    left, right = -torch.ones(3, 3, 8, 10), torch.ones(3, 3, 16, 20)  # the right is fitted to the left's size
    both = report.side_by_side(left, right, gap=2)
    assert both.shape == (3, 3, 8, 22)
    assert (both[..., :10] == -1).all() and (both[..., 12:] == 1).all() and (both[..., 10:12] == -0.8).all()


def test_loss_curve_is_valid_svg_with_a_point_per_step_and_a_line_per_phase():
    log = {"phases": [{"stage": 1, "expert": "transformer", "steps": 4}, {"stage": 2, "expert": "transformer",
                                                                          "steps": 3}],
           "losses": [[0.9, 0.7, float("nan"), 0.5], [0.6, 0.4, 0.3]]}
    svg = ET.fromstring(report.loss_curve_svg(log))
    assert svg.tag == f"{SVG}svg"
    assert len(svg.findall(f"{SVG}circle")) == 6  # the NaN step is not drawn
    assert len(svg.findall(f"{SVG}polyline")) == 2
    labels = [t.text for t in svg.findall(f"{SVG}text")]
    assert "stage 1 (transformer)" in labels and "stage 2 (transformer)" in labels
    assert "No training losses" in report.loss_curve_svg({"losses": []})


def test_report_escapes_what_the_user_wrote(toy_clip, tmp_path):
    out = tmp_path / "r.mp4"
    media.write_video(out, toy_clip.video)
    paths = report.write_result_report(out, toy_clip.video, toy_clip.video, toy_clip.masks, 16.0,
                                       {"prompt": "<script>alert(1)</script>"})
    page = paths["report"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    metrics = json.loads(paths["metrics"].read_text())["metrics"]
    assert metrics["bg_psnr"] == 100.0 and metrics["bg_ssim"] > 0.999


def test_masks_from_loraedit_mask_drive_an_edit_whose_folder_has_every_report_file(wan21_dir, clip_files, tmp_path,
                                                                                    capsys):
    # masks drawn as key-frame boxes by `loraedit mask`, read by `loraedit edit --mask`
    mask_out = tmp_path / "masks"
    assert main(["mask", "--video", str(clip_files["video"]), "--box", "0:8,8,40,40", "--box", "16:24,24,60,60",
                 "--out", str(mask_out), "--quiet"]) == 0
    out = tmp_path / "result" / "edit.mp4"
    args = _clip_args(wan21_dir, clip_files, tmp_path)
    args[args.index("--mask") + 1] = str(mask_out / "masks")
    code = main(["edit", *args, "--edited-first-frame", str(clip_files["edited0"]), "--out", str(out),
                 "--prompt", "a <b>blue</b> square", *FAST_TRAIN, *FAST_SAMPLE])
    assert code == 0, capsys.readouterr().err
    paths = report.result_paths(out)
    assert all(p.is_file() for p in paths.values()), [p for p in paths.values() if not p.is_file()]
    assert media.read_video(paths["side_by_side"])[0].shape == (9, 3, 64, 64 * 2 + 4)
    data = json.loads(paths["metrics"].read_text())
    assert set(data["metrics"]) == {"bg_psnr", "bg_ssim"} and data["settings"]["mode"] == "mask-aware"
    assert data["settings"]["prompt"] == "p3rs0n, a <b>blue</b> square"
    page = paths["report"].read_text()
    assert page.count("<svg") == 1 and "stage 1 (transformer)" in page and "a &lt;b&gt;blue&lt;/b&gt; square" in page
    assert 'src="edit.side_by_side.mp4"' in page and 'src="edit.contact.png"' in page
    log = json.loads((api.work_dir_for(out) / "train_log.json").read_text())
    assert page.count("<circle") == sum(len(x) for x in log["losses"])


def test_train_writes_a_report_with_the_loss_curve(wan21_dir, clip_files, tmp_path):
    lora_dir = tmp_path / "lora"
    assert main(["train", *_clip_args(wan21_dir, clip_files, tmp_path), "--out", str(lora_dir), *FAST_TRAIN,
                 "--stage1-steps", "3"]) == 0
    page = (lora_dir / "report.html").read_text()
    assert "<svg" in page and page.count("<circle") == 3
