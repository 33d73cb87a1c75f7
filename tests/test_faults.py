"""Faults of the disk and of files a run reads: one line naming the file, nothing lost.

A full disk is a real small filesystem (a tmpfs mounted here; where mounting is not permitted
those tests skip and say so), not a simulated error: what fails, and where, is what a user
meets. Each case is cheap: in-process where it can be, one command line where the line a user
reads is what is tested.
"""

import contextlib
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import REPO, require_data
from helpers import final_state, tiny_config
from research import checkpoints, evaluation, inference, train, writers
from research.models import builder, hf_io


@contextlib.contextmanager
def small_filesystem(folder: pathlib.Path, size: str, *, read_only: bool = False):
  """A tmpfs of `size` mounted on `folder` for the block (a skip where mounting is refused)."""
  folder.mkdir(parents=True, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=1000", "tmpfs",
                            str(folder)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
  try:
    yield folder
  finally:
    subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder: pathlib.Path) -> None:
  """Leaves no byte free on `folder`'s filesystem."""
  with (folder / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
    while True:
      f.write(b"\0" * 4096)


# ---- files read from a checkpoint folder -------------------------------------------------------


@pytest.mark.parametrize("header,expect", [
    (struct.pack("<Q", 1 << 40) + b"{}", "header too large"),
    (struct.pack("<Q", 8) + b"notjson!" + bytes(16), "invalid JSON in header"),
    (b"\x01\x02\x03", "header too small"),
])
def test_a_malformed_safetensors_file_is_named(tmp_path, header, expect):
  (tmp_path / "model.safetensors").write_bytes(header)
  with pytest.raises(hf_io.CheckpointError) as raised:
    hf_io.read_state_dict(tmp_path)
  message = str(raised.value)
  assert message.startswith(f"cannot read {tmp_path / 'model.safetensors'}: ")
  assert expect in message and message.endswith("it is not a complete safetensors file")


def test_a_checkpoint_folder_without_a_tokenizer_is_refused(tmp_path):
  """A model.checkpoint folder with config.json and weights but no tokenizer files: transformers
  builds a 5-token BertTokenizer from it (every word [UNK]) and the run trained on that."""
  shutil.copy(hf_io.embedded_checkpoint_dir() / "config.json", tmp_path / "config.json")
  config = tiny_config(**{"model.checkpoint": str(tmp_path), "model.tokenizer": ""})
  with pytest.raises(hf_io.CheckpointError) as raised:
    builder.build_model(config)
  assert str(raised.value) == (
      f"config.model.checkpoint: {tmp_path} holds no tokenizer (none of tokenizer.json, "
      "vocab.txt, vocab.json, sentencepiece.bpe.model, spm.model); set config.model.tokenizer "
      "to the folder or hub name of the model's tokenizer")
  config.model.tokenizer = "embedded"  # pointed elsewhere, the folder's weights are usable
  assert builder.build_model(config).tokenizer_dir == hf_io.embedded_checkpoint_dir()


# ---- damaged files of a workdir ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_a_damaged_workdir_file_is_one_line_naming_it(reference_run, tmp_path, name):
  """A rerun of a finished run whose config.json or results.json was cut short."""
  reference_dir, config, _ = reference_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  (workdir / name).write_text('{"final": ')
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  with pytest.raises(writers.WorkdirError) as raised:
    train.train_and_evaluate(config, workdir)
  assert str(raised.value).startswith(f"{workdir / name} is damaged: it is not JSON (")
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


# ---- a full or read-only disk ------------------------------------------------------------------


def test_a_new_workdir_on_a_full_disk_is_one_line(tmp_path):
  with small_filesystem(tmp_path / "disk", "64k") as disk:
    _fill(disk)
    with pytest.raises(writers.WorkdirError) as raised:
      with writers.workdir_lock(disk / "new"):
        pass
    assert str(raised.value) == (f"cannot write to --workdir {disk / 'new'}: No space left on "
                                 "device (0 bytes free)")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # the new workdir went again


def test_a_write_to_a_full_disk_keeps_the_file_it_replaces(tmp_path):
  with small_filesystem(tmp_path / "disk", "64k") as disk:
    writers.write_text(disk / "results.json", "old\n")
    _fill(disk)
    with pytest.raises(writers.WorkdirError) as raised:
      writers.write_text(disk / "results.json", "x" * 100_000)
    assert str(raised.value) == (
        f"cannot write {disk / 'results.json'}: No space left on device (0 bytes free; it "
        "needs about 100,000); nothing written before was changed")
    assert (disk / "results.json").read_text() == "old\n"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "results.json"]


def test_eval_on_a_read_only_workdir_is_refused_before_it_computes(reference_run, tmp_path,
                                                                   monkeypatch):
  reference_dir, config, _ = reference_run
  with small_filesystem(tmp_path / "disk", "16m") as disk:
    shutil.copytree(reference_dir, disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    def computed(*args, **kwargs):
      raise AssertionError("the evaluation ran although its results cannot be written")

    monkeypatch.setattr(evaluation, "run_model", computed)
    with pytest.raises(writers.WorkdirError) as raised:
      inference.evaluate(config, disk / "run")
  assert str(raised.value) == (f"cannot write {disk / 'run' / 'eval'}: Read-only file system; "
                               "nothing written before was changed")


def test_a_full_disk_during_a_checkpoint_save_is_one_line(tmp_path):
  """The tiny run on a 6 MB filesystem: its first checkpoint fits, the second does not. Once
  2,350 lines of orbax's errors and tracebacks; now the one line, and the checkpoint before
  intact."""
  require_data("sst2")
  with small_filesystem(tmp_path / "disk", "6m") as disk:
    workdir = disk / "run"
    env = dict(os.environ)
    env.pop("RESEARCH_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "research.main", "--config",
                             "tests/helpers.py", "--workdir", str(workdir)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if not line.startswith("I")]
    assert len(ours) == 1, result.stderr[-3000:]  # besides the progress log: the one line
    assert ours[0].startswith(f"error: cannot save the checkpoint {workdir / 'checkpoints'}/")
    assert ": no space left on its device (" in ours[0]
    assert "; a checkpoint needs up to " in ours[0]
    assert ours[0].endswith("The checkpoints saved before are intact (the newest: step 5); "
                            "rerun to resume from it once there is room")
    step, state = final_state(workdir)
    assert step == 5 and checkpoints.all_finite(state)  # restored: its checksum verified
    assert json.loads((workdir / "run.json").read_text())["outcome"] == "failed: WorkdirError"


def test_an_export_to_a_full_disk_leaves_no_partial_model(reference_run, tmp_path):
  """The export is written beside --output and renamed when complete: a full disk leaves
  neither a folder that looks like a model (config.json without its weights) nor debris."""
  reference_dir, config, _ = reference_run
  with small_filesystem(tmp_path / "disk", "1m") as disk:
    with pytest.raises(writers.WorkdirError) as raised:
      inference.export(config, reference_dir, disk / "exported")
    assert list(disk.iterdir()) == []
  assert str(raised.value).startswith(f"cannot write {disk / 'exported'}: No space left on "
                                      "device (")
