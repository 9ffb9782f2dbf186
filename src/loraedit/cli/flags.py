"""The flag that sets each setting a message from below the command line names.

Modules below `cli` know settings, not flags (`errors.setting("learning_rate")`): the web app has no flags
and a batch job's keys are the settings' own names. The command line prints each setting as the flag a
user types (`errors.error_text(exc, FLAGS)`), so its messages still name the option and the fix.
`tests/test_errors.py` checks that every setting the package names is here and every flag exists.
"""

from __future__ import annotations

#: setting (its config field, or the option's own name where no field holds it) -> the flag that sets it
FLAGS = {
    "checkpoint_blocks": "--checkpoint-blocks",
    "draws_per_step": "--draws-per-step",
    "frames": "--frames",
    "fsdp": "--fsdp",
    "keep_attention": "--keep-attention",
    "learning_rate": "--lr",
    "low_cost": "--low-cost",
    "memory_mode": "--memory-mode",
    "model": "--model",
    "out": "--out",
    "resume": "--resume",
    "size": "--size",
    "targets": "--targets",
}
