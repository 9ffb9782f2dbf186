"""Reading, resampling, resizing and writing of videos, images and edit masks.

Conventions (shared with the rest of the package):

* frames are float32 tensors in [-1, 1], shape [T, 3, H, W] (video) or [3, H, W] (image);
* edit masks are float32 tensors in {0, 1}, shape [T, H, W] or [H, W]; 1 marks a pixel the edit
  may change (white in mask files).

Every problem with a user's file is reported as ``InputError`` with a one-line message naming the
file and the fix, because the CLI turns that message into the only thing the user sees; raw
PyAV/Pillow/torch exceptions would be unreadable there. Outputs are written atomically (temporary
file in the same folder, then ``os.replace``) so an interrupted run never leaves a half-written
video that looks like a result.

The package is split by job: `reading` (files in), `frames` (which frames, the shared geometry), `writing`
(files out, atomically) and `sheets` (contact sheets); every public name is importable from
`loraedit.media` itself, which is how the rest of the package uses them.
"""

from __future__ import annotations

from .frames import (
    check_masks_match,
    cover_crop,
    cover_size,
    largest_valid_frame_count,
    prepare_masks,
    prepare_video,
    resolve_size,
    scaled_size,
    shrink_clip,
    shrink_masks,
    uniform_frame_indices,
)
from .reading import FOLDER_FPS, IMAGE_EXTENSIONS, natural_key, read_image, read_mask_image, read_masks, read_video
from .sheets import contact_sheet, write_contact_sheet
from .writing import atomic_path, to_uint8, write_image, write_video

__all__ = ["FOLDER_FPS", "IMAGE_EXTENSIONS", "atomic_path", "check_masks_match", "contact_sheet", "cover_crop",
           "cover_size", "largest_valid_frame_count", "natural_key", "prepare_masks", "prepare_video", "read_image",
           "read_mask_image", "read_masks", "read_video", "resolve_size", "scaled_size", "shrink_clip", "shrink_masks", "to_uint8",
           "uniform_frame_indices", "write_contact_sheet", "write_image", "write_video"]
