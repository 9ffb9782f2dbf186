"""`loraedit batch`: the batch file, the plan, the Ray scheduler, and toy-world batches on a local Ray cluster.

One Ray session serves the whole module (starting one costs seconds). Its workers inherit this process's
environment, which the fixture extends with the tests folder (so the scheduler's tests can run this
module's functions in workers) and the kill seam's folder (`batch.KILL_DIR_ENV`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from loraedit import batch, media
from loraedit.batch import BadJob, Job, plan_jobs
from loraedit.cli import main
from loraedit.cli.batch import read_jobs
from loraedit.errors import InputError

from loraedit.ray_batch import Item, ray_session, run_tasks

from batch_tasks import record

#: The toy world's model at the tests' tiny settings (a few seconds a job on one CPU thread).
TINY = '''model = "toy"
frames = 9
size = "64x64"
stage1_steps = 4
rank = 4
lr = 1e-3
steps = 3
checkpoint_every = 1
'''


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- the batch file (no Ray) --------------------------------------------------------------------------


def test_jobs_read_like_edit_options_with_defaults_and_paths_relative_to_the_file(tmp_path):
    jobs = read_jobs(_write(tmp_path / "b.toml", TINY.replace("model", "[defaults]\nmodel", 1) + '''
video = "clip.mp4"
mask = "masks"

[[job]]
edited_first_frame = "e0.png"
edited_frame = ["8:e8.png:m8.png"]
out = "out/a.mp4"
prompt = "a red square"
mode = "mask-aware"
steps = 5

[[job]]
name = "second"
edited-first-frame = "/abs/e1.png"
out = "out/b.mp4"
mode = "no-lora"
'''))
    a, b = jobs
    assert isinstance(a, Job) and isinstance(b, Job)
    assert a.name == "a" and b.name == "second"
    assert a.inputs.video == tmp_path / "clip.mp4" and a.inputs.mask == tmp_path / "masks"
    assert a.inputs.frames == 9 and a.inputs.size == (64, 64)
    assert a.inputs.edited_frames[0].index == 8 and a.inputs.edited_frames[0].mask == tmp_path / "m8.png"
    assert a.out == tmp_path / "out" / "a.mp4" and b.edited_first_frame == Path("/abs/e1.png")
    assert a.scfg.steps == 5 and b.scfg.steps == 3 and a.cfg.stage1_steps == 4 and a.cfg.learning_rate == 1e-3
    assert a.opts.prompt == "a red square" and b.opts.mode == "no-lora"
    assert a.opts.resume and not a.opts.progress  # decided by the batch


@pytest.mark.parametrize("job, message", [
    ('bogus = 1', "job 'a' sets unknown option 'bogus': valid keys are the long options of `loraedit edit"),
    ('steps = "many"', "job 'a': steps = 'many' is invalid"),
    ('steps = 2.5', "steps = 2.5 is invalid (needs a whole number)"),
    ('mode = "best"', "mode = 'best' is invalid: choose one of mask-aware, naive"),
    ('strict = "yes"', "strict = 'yes' is invalid: give true or false"),
    ('size = "64by64"', "size '64by64' is not WIDTHxHEIGHT"),
    ('resume = true', "sets resume, which the batch decides"),
    ('quiet = true', "sets quiet, which the batch decides"),
])
def test_a_bad_job_is_one_line_and_the_others_still_read(tmp_path, job, message):
    path = _write(tmp_path / "b.toml", f'''
[defaults]
video = "v.mp4"
mask = "m"
edited_first_frame = "e.png"

[[job]]
out = "a.mp4"
{job}

[[job]]
out = "b.mp4"
''')
    bad, good = read_jobs(path)
    assert isinstance(bad, BadJob) and isinstance(good, Job)
    assert message in bad.error and "\n" not in bad.error and bad.name == "a"


def test_a_job_without_its_inputs_names_what_to_add(tmp_path):
    [job] = read_jobs(_write(tmp_path / "b.toml", '[[job]]\nname = "x"\nvideo = "v.mp4"\n'))
    assert job.error.endswith("job 'x' has no mask, edited_first_frame, out: add mask = \"...\" to it or to "
                              "[defaults]")


@pytest.mark.parametrize("text, message", [
    ("[[job]\n", "is not valid TOML"),
    ("[defaults]\nmodel = 'toy'\n", "has no jobs: add one [[job]] table per edit"),
    ("job = 3\n", "has no jobs"),
    ("model = 'toy'\n[[job]]\nout = 'a.mp4'\n", "has top-level key(s) model: put options in [defaults]"),
])
def test_an_unusable_batch_file_is_one_error(tmp_path, text, message):
    with pytest.raises(InputError) as info:
        read_jobs(_write(tmp_path / "b.toml", text))
    assert message in str(info.value) and str(tmp_path / "b.toml") in str(info.value)
    with pytest.raises(InputError, match="does not exist"):
        read_jobs(tmp_path / "missing.toml")



def _defaults(clip_files) -> str:
    """The [defaults] table the batch tests share: the tiny settings and the test clip, cache beside the file."""
    return "[defaults]\n" + TINY + f'''
video = "{clip_files['video']}"
mask = "{clip_files['mask']}"
edited_first_frame = "{clip_files['edited0']}"
cache_dir = "cache"
'''

def test_the_plan_refuses_repeated_names_and_outputs_and_groups_by_clip(clip_files, tmp_path):
    path = _write(tmp_path / "b.toml", _defaults(clip_files) + f'''
[[job]]
out = "a.mp4"
[[job]]
out = "b.mp4"
edited_first_frame = "{clip_files['edited8']}"
[[job]]
out = "c.mp4"
train_seed = 1
[[job]]
name = "a"
out = "d.mp4"
[[job]]
name = "e"
out = "a.mp4"
[[job]]
out = "f.mp4"
frames = 10
''')
    planned, rows = plan_jobs(read_jobs(path))
    assert [p.job.name for p in planned] == ["a", "b", "c"]
    assert planned[0].group == planned[1].group != planned[2].group  # same clip and stage-1 settings
    assert planned[0].key != planned[1].key
    assert "job name 'a' is used twice" in rows[3]["error"]
    assert "is also job 'a''s output: give each job its own out" in rows[4]["error"]
    assert rows[5]["status"] == "invalid" and "--frames 10 is not 4k+1" in rows[5]["error"]


# ---- the scheduler on a local Ray cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray instance for the module: 2 CPUs (so groups can be seen to wait), no dashboard."""
    ray = pytest.importorskip("ray")
    kill_dir = tmp_path_factory.mktemp("kill")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", batch.KILL_DIR_ENV, "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved["PYTHONPATH"]]))
    os.environ[batch.KILL_DIR_ENV] = str(kill_dir)
    os.environ["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024**2,
             logging_level="error")
    print(f"ray started in {time.perf_counter() - started:.1f} s")
    try:
        yield kill_dir
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_group_runs_its_first_item_alone_then_the_rest(ray_cluster, tmp_path):
    items = [Item(name, {"folder": str(tmp_path), "name": name, "sleep": 0.4}, group)
             for name, group in (("lead", "g"), ("f1", "g"), ("f2", "g"), ("solo", None))]
    with ray_session() as session:
        results = run_tasks(items, record, session, progress=False)
    assert {n: r["status"] for n, r in results.items()} == dict.fromkeys(("lead", "f1", "f2", "solo"), "done")
    times = {n: json.loads((tmp_path / f"{n}.times").read_text()) for n in results}
    assert times["f1"][0] >= times["lead"][1] and times["f2"][0] >= times["lead"][1]


def test_failed_tries_and_dead_workers_are_retried_up_to_the_budget(ray_cluster, tmp_path):
    for name, kind in (("flaky", "fail"), ("killed", "die"), ("killed-twice", "die")):
        (tmp_path / f"{name}.{kind}").touch()

    def item(name, **kw):
        return Item(name, {"folder": str(tmp_path), "name": name, **kw})

    items = [item("flaky", once="fail"), item("killed", once="die"), item("broken", always="fail"),
             item("input-error", always="fail", retry=False)]
    with ray_session() as session:
        results = run_tasks(items, record, session, retries=2, progress=False)
        assert {n: (r["status"], r["tries"]) for n, r in results.items()} == {
            "flaky": ("done", 2), "killed": ("done", 2), "broken": ("failed", 3), "input-error": ("failed", 1)}
        [died] = run_tasks([item("killed-twice", once="die")], record, session, retries=0, progress=False).values()
    assert died["status"] == "failed" and "its worker died" in died["error"] and died["tries"] == 1


# ---- toy-world batches --------------------------------------------------------------------------------


def test_a_toy_batch_runs_reports_and_resumes(ray_cluster, clip_files, tmp_path, capsys):
    """Three jobs: two edits of one clip sharing one stage-1 LoRA, the first of which has its worker killed after
    its first training step (retried, it resumes from its checkpoint; the second waits for it), and one with
    a missing input (refused; the others run). Then the same command again, as after a crash that lost the
    second job's record: only that job runs."""
    (ray_cluster / "first.kill").touch()
    jobs = _write(tmp_path / "jobs.toml", _defaults(clip_files) + f'''
[[job]]
out = "out/first.mp4"

[[job]]
out = "out/second.mp4"
edited_first_frame = "{clip_files['edited8']}"

[[job]]
name = "bad"
out = "out/bad.mp4"
mask = "no-such-masks"
''')
    assert main(["batch", str(jobs), "--retries", "1", "--quiet"]) == 2  # a job was refused
    printed = capsys.readouterr()
    summary = json.loads((tmp_path / "jobs.summary.json").read_text())
    rows = {r["job"]: r for r in summary["jobs"]}
    assert {n: (r["status"], r["tries"]) for n, r in rows.items()} == {
        "first": ("done", 2), "second": ("done", 1), "bad": ("invalid", 0)}
    assert not (ray_cluster / "first.kill").exists()  # the kill happened
    log = json.loads((tmp_path / "out" / "first.work" / "train_log.json").read_text())
    assert len(log["losses"][0]) == 4  # the retry continued from the kill's checkpoint (a fresh run is refused)
    assert "--mask: " in rows["bad"]["error"] and "no-such-masks" in rows["bad"]["error"]
    for name in ("first", "second"):
        out = tmp_path / "out" / f"{name}.mp4"
        assert media.read_video(out)[0].shape[0] == 9 and rows[name]["out"] == str(out)
        assert rows[name]["bg_psnr"] > 10 and rows[name]["minutes"] > 0
    assert len(list((tmp_path / "cache" / "stage1").glob("*.safetensors"))) == 1  # trained once, used twice
    assert "job     status" in printed.out and "bad: invalid: --mask:" in printed.out
    assert "2 done, 1 invalid" in printed.out and "1 of 3 jobs were refused" in printed.err

    (tmp_path / "out" / "second.batch.json").unlink()  # as if the batch died before 'second' was recorded
    assert main(["batch", str(jobs), "--dry-run"]) == 2
    assert "1 done before, 1 would run, 1 invalid; dry run: nothing ran" in capsys.readouterr().out
    assert main(["batch", str(jobs), "--quiet"]) == 2
    again = {r["job"]: r["status"] for r in json.loads((tmp_path / "jobs.summary.json").read_text())["jobs"]}
    assert again == {"first": "done before", "second": "done", "bad": "invalid"}
    assert "1 done before, 1 done, 1 invalid" in capsys.readouterr().out
