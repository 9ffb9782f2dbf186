"""Masks: the authors' box rule, dilation, key-frame boxes, the SAM2 tracker (tiny random model), `loraedit mask`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loraedit import masks, media
from loraedit.cli import main
from loraedit.sam2_tracker import Prompt, Sam2Tracker
from loraedit.toyworld.render import box_masks as toyworld_box_masks

SAM_SIZE = 64  # the tiny tracker's input size (real SAM2: 1024)


def write_tiny_sam2(folder: Path) -> Path:
    """A random-weight SAM2 video tracker built from a config, saved like a real transformers folder.

    The sizes respect the model's fixed ratios: features at 1/4, 1/8, 1/16 of the input, the memory
    attention's 64 key/value channels and a hidden size that is a multiple of them.
    """
    from transformers import Sam2VideoConfig, Sam2VideoModel

    s = SAM_SIZE
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 8, "num_attention_heads": 1, "image_size": [s, s],
                "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [8, 16, 32, 64],
                "num_attention_heads_per_stage": [1, 1, 1, 1], "window_size_per_stage": [4, 4, 4, 2],
                "global_attention_blocks": [3], "window_positional_embedding_background_size": [2, 2]}
    vision = {"model_type": "sam2_vision_model", "backbone_config": backbone, "backbone_channel_list": [64, 32, 16, 8],
              "backbone_feature_sizes": [[s // 4] * 2, [s // 8] * 2, [s // 16] * 2], "fpn_hidden_size": 128}
    config = Sam2VideoConfig(
        vision_config=vision, image_size=s,
        prompt_encoder_config={"hidden_size": 128, "image_size": s, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 16},
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16], memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64, num_maskmem=3)
    torch.manual_seed(0)
    Sam2VideoModel(config).save_pretrained(folder)
    _processor("Sam2VideoProcessor", s).save_pretrained(folder)
    return folder


def write_tiny_sam3_tracker(folder: Path) -> Path:
    """SAM3's tracker (a ViT backbone, 14-px patches) at 112 px, the same memory sizes as the SAM2 one."""
    from transformers import Sam3TrackerVideoConfig, Sam3TrackerVideoModel

    s = 112
    vit = {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "image_size": s, "patch_size": 14, "window_size": 4, "global_attn_indexes": [1],
           "pretrain_image_size": 56}
    vision = {"model_type": "sam3_vision_model", "backbone_config": vit, "fpn_hidden_size": 128,
              "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]]}
    config = Sam3TrackerVideoConfig(
        vision_config=vision, image_size=s,
        prompt_encoder_config={"hidden_size": 128, "image_size": s, "patch_size": 14, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 16},
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, num_maskmem=3)
    torch.manual_seed(0)
    Sam3TrackerVideoModel(config).save_pretrained(folder)
    _processor("Sam3TrackerVideoProcessor", s).save_pretrained(folder)
    return folder


def _processor(name: str, s: int):
    import transformers

    return getattr(transformers, name)(
        image_processor=transformers.Sam2ImageProcessor(size={"height": s, "width": s},
                                                        mask_size={"height": s // 4, "width": s // 4}),
        video_processor=transformers.Sam2VideoVideoProcessor(size={"height": s, "width": s}), target_size=s)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory) -> Path:
    return write_tiny_sam2(tmp_path_factory.mktemp("models") / "sam2")


# ---- the box rule -------------------------------------------------------------------------------------


def test_box_rule_grows_each_component_five_percent_a_side_and_drops_specks():
    sil = torch.zeros(1, 100, 120)
    sil[0, 20:60, 10:50] = 1  # 40x40 component: grows 2 px a side
    sil[0, 80:83, 100:103] = 1  # 9 px speck: dropped (authors: under 50 px)
    sil[0, 5:15, 100:115] = 1  # 10x15 = 150 px: kept, grows 1 px (at least one) vertically, 1 px horizontally
    out = masks.box_masks(sil)
    expected = torch.zeros(1, 100, 120)
    expected[0, 18:62, 8:52] = 1
    expected[0, 4:16, 99:116] = 1
    assert torch.equal(out, expected)


def test_box_rule_clips_at_the_frame_and_joins_diagonal_neighbours():
    sil = torch.zeros(1, 30, 30)
    sil[0, 0:10, 0:10] = 1
    sil[0, 10:20, 10:20] = 1  # touches the first only at a corner: one 8-connected component
    out = masks.box_masks(sil, min_pixels=0)
    assert out[0, 0:21, 0:21].all() and out.sum() == 21 * 21


def test_box_rule_agrees_with_the_toy_worlds_copy():
    rng = np.random.default_rng(0)
    sil = np.zeros((4, 48, 64), dtype=bool)
    for t in range(4):
        for _ in range(3):
            y, x, h, w = rng.integers(0, 40), rng.integers(0, 56), rng.integers(1, 20), rng.integers(1, 20)
            sil[t, y:y + h, x:x + w] = True
    ours = masks.box_masks(torch.from_numpy(sil).float(), min_pixels=0.005 * 48 * 64)
    assert torch.equal(ours, torch.from_numpy(toyworld_box_masks(sil).astype(np.float32)))


@settings(max_examples=60, deadline=None)
@given(y0=st.integers(0, 40), x0=st.integers(0, 40), h=st.integers(1, 30), w=st.integers(1, 30))
def test_grown_box_contains_the_component_and_grows_by_the_rule(y0, x0, h, w):
    height, width = 64, 64
    y1, x1 = min(y0 + h, height), min(x0 + w, width)
    gy0, gy1, gx0, gx1 = masks.grow_box(y0, y1, x0, x1, height, width)
    assert gy0 <= y0 and gy1 >= y1 and gx0 <= x0 and gx1 >= x1
    assert 0 <= gy0 and gy1 <= height and 0 <= gx0 and gx1 <= width
    grow_y, grow_x = max(1, round(0.05 * (y1 - y0))), max(1, round(0.05 * (x1 - x0)))
    assert (gy0, gy1, gx0, gx1) == (max(y0 - grow_y, 0), min(y1 + grow_y, height), max(x0 - grow_x, 0),
                                    min(x1 + grow_x, width))


def test_dilation_is_a_euclidean_disk():
    m = torch.zeros(1, 21, 21)
    m[0, 10, 10] = 1
    out = masks.dilate(m, 3)
    yy, xx = torch.meshgrid(torch.arange(21), torch.arange(21), indexing="ij")
    assert torch.equal(out[0], (((yy - 10) ** 2 + (xx - 10) ** 2) <= 9).float())
    assert torch.equal(masks.dilate(m, 0), m)


# ---- key-frame boxes ----------------------------------------------------------------------------------

boxes = st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(51, 100), st.floats(51, 100))


@settings(max_examples=60, deadline=None)
@given(keys=st.dictionaries(st.integers(0, 20), boxes, min_size=1, max_size=4))
def test_interpolated_boxes_pass_through_the_keys_and_stay_between_them(keys):
    out = masks.interpolate_boxes(keys, 21)
    assert len(out) == 21
    for k, box in keys.items():
        assert out[k] == pytest.approx(box)
    order = sorted(keys)
    for t, box in enumerate(out):
        before = max((k for k in order if k <= t), default=order[0])
        after = min((k for k in order if k >= t), default=order[-1])
        for i in range(4):
            lo, hi = sorted((keys[before][i], keys[after][i]))
            assert lo - 1e-9 <= box[i] <= hi + 1e-9


def test_interpolation_is_linear_and_held_outside_the_keys():
    out = masks.interpolate_boxes({2: (0, 0, 10, 10), 6: (40, 20, 50, 30)}, 9)
    assert out[0] == out[1] == out[2] == (0, 0, 10, 10)
    assert out[4] == pytest.approx((20, 10, 30, 20))
    assert out[8] == out[6] == (40, 20, 50, 30)


def test_boxes_cover_every_pixel_they_touch():
    m = masks.boxes_to_masks([(1.5, 2.2, 4.1, 4.0), (-5, -5, 100, 100)], (8, 6))
    assert torch.nonzero(m[0]).min(0).values.tolist() == [2, 1] and torch.nonzero(m[0]).max(0).values.tolist() == [3, 4]
    assert m[1].all()


# ---- the SAM2 tracker ---------------------------------------------------------------------------------


def test_sam2_tracker_loads_the_local_folder_and_tracks_forward_and_backward(sam_dir):
    video = torch.rand(7, 3, 40, 56) * 2 - 1
    tracker = Sam2Tracker(sam_dir, "cpu")
    result = tracker.track(video, [Prompt(3, points=((20.0, 12.0, 1), (30.0, 30.0, 0)), box=(10, 5, 40, 30))],
                           progress=False)
    assert result.outlines.shape == (7, 40, 56)
    assert set(result.outlines.unique().tolist()) <= {0.0, 1.0}
    assert result.frames_tracked == list(range(7))  # forward from frame 3 and back to 0


def test_sam3_tracker_runs_through_the_same_code_path(tmp_path):
    folder = write_tiny_sam3_tracker(tmp_path / "sam3")
    result = Sam2Tracker(folder, "cpu").track(torch.rand(4, 3, 30, 40) * 2 - 1, [Prompt(1, box=(5, 5, 30, 25))],
                                              progress=False)
    assert result.outlines.shape == (4, 30, 40) and result.frames_tracked == [0, 1, 2, 3]


def test_sam2_folder_with_pickle_weights_or_code_is_refused(sam_dir, tmp_path):
    from loraedit.sam2_tracker import folder_problems

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "processor_config.json"):
        (bad / name).write_text((sam_dir / name).read_text())
    (bad / "pytorch_model.bin").write_bytes(b"not opened")
    (bad / "modeling_sam.py").write_text("print('never run')")
    problems = folder_problems(bad)
    assert any("pickle weights" in p and str(bad) in p for p in problems)
    assert any("ships Python code" in p for p in problems)
    assert "does not exist" in folder_problems(tmp_path / "missing")[0]


# ---- loraedit mask ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory, toy_clip):
    path = tmp_path_factory.mktemp("maskclip") / "clip.mp4"
    media.write_video(path, toy_clip.video, fps=16)
    return path


def test_mask_command_with_sam2_writes_masks_edit_can_read(sam_dir, clip_video, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["mask", "--video", str(clip_video), "--sam", str(sam_dir), "--points", "30,30", "20,20,0",
                 "--box", "8:10,10,50,50", "--shape", "outline", "--dilate", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    read = media.read_masks(out / "masks")
    assert read.shape == (17, 64, 64)
    assert media.read_video(out / "preview.mp4")[0].shape == (17, 3, 64, 64)
    info = json.loads((out / "masks.json").read_text())
    assert info["method"] == "sam2 + outline" and info["dilate"] == 2 and info["frames"] == 17
    assert f"--mask {out / 'masks'}" in capsys.readouterr().out


def test_mask_command_with_key_frame_boxes_is_read_back_exactly(clip_video, tmp_path):
    out = tmp_path / "kb"
    assert main(["mask", "--video", str(clip_video), "--box", "0:0,0,16,16", "--box", "16:32,32,64,64",
                 "--out", str(out), "--quiet"]) == 0
    read = media.read_masks(out / "masks")
    expected = masks.boxes_to_masks(masks.interpolate_boxes({0: (0, 0, 16, 16), 16: (32, 32, 64, 64)}, 17), (64, 64))
    assert torch.equal(read, expected)
    # a second run replaces the masks as a whole: no stale frames survive
    assert main(["mask", "--video", str(clip_video), "--box", "0:0,0,8,8", "--out", str(out), "--quiet"]) == 0
    assert media.read_masks(out / "masks").sum() == 17 * 64
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_mask_command_reports_every_problem_at_once(clip_video, tmp_path, capsys):
    code = main(["mask", "--video", str(clip_video), "--points", "30,30", "--box", "3:50,50,10,10",
                 "--box", "99:0,0,5,5", "--shape", "outline", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--points need the SAM2 tracker" in err
    assert "is empty" in err and "frame 99 is outside the video" in err
    assert "--shape outline and --dilate shape a tracked outline" in err
    assert not (tmp_path / "x").exists()


def test_mask_command_refuses_a_missing_sam_folder(clip_video, tmp_path, capsys):
    code = main(["mask", "--video", str(clip_video), "--sam", str(tmp_path / "nope"), "--points", "3,3",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and f"--sam {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
