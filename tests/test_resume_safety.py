"""Resume reads run checkpoints without running code, refuses files that are not the run's, and keeps old runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ldm.interfaces.cli.main import main as cli_main
from ldm.training.resume import ResumeError, SafeCheckpointIO
from ldm.training.run import RunDirExistsError, TrainingStopped, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

OLD_CHECKPOINT = Path(__file__).parent / "data" / "vae-run-e4731bb.ckpt"
FAST = [
    "trainer.max_steps=2",
    "logging.sample_every_n_steps=0",
    "logging.checkpoint_every_n_steps=0",
    "data.val_fraction=0",
    "logging.csv=false",
    "data.batch_size=2",
    "model.params.ddconfig.ch_mult=[1]",
    "training.disc_start=null",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=8)


class Payload:
    """Unpickling this calls open(marker, "w"): what a malicious checkpoint would do with os.system instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 1, "optimizer_states": [], "evil": Payload(marker)}, path)
    return path


def test_the_crafted_file_really_runs_code_when_unpickled_unsafely(tmp_path):
    # Guards the tests below: the payload is live, so its marker not appearing there means something.
    ckpt = crafted_checkpoint(tmp_path / "last.ckpt", tmp_path / "marker")
    torch.load(ckpt, weights_only=False)
    assert (tmp_path / "marker").exists()


def test_resume_never_runs_a_pickle_payload_even_when_torch_is_told_to_allow_it(shapes, tmp_path):
    run_dir = tmp_path / "run"
    marker = tmp_path / "pwned"
    crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    cfg = tmp_path / "vae.yaml"
    cfg.write_text(yaml.safe_dump(tiny_train_config("vae", shapes, run_dir, FAST)))
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    for args in (["--config", str(cfg), "--resume"], ["--resume", str(run_dir)]):  # with and without the YAML
        r = subprocess.run(
            [sys.executable, "-m", "ldm.interfaces.cli.main", "train", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert not marker.exists()
        assert "Traceback" not in r.stderr
        assert "ldm train: error: cannot read checkpoint" in r.stderr
        assert len([line for line in r.stderr.splitlines() if "error:" in line]) == 1


def test_lightning_reads_checkpoints_only_through_the_weights_only_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    ckpt = crafted_checkpoint(tmp_path / "x.ckpt", tmp_path / "marker")
    with pytest.raises(ResumeError, match="cannot read checkpoint"):
        SafeCheckpointIO().load_checkpoint(ckpt, weights_only=False)  # what the caller asks is ignored
    assert not (tmp_path / "marker").exists()
    trainer = train.__globals__["build_trainer"](tiny_train_config("vae", tmp_path, tmp_path / "r", FAST))
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_a_run_checkpoint_written_before_the_safe_loader_still_resumes(shapes, tmp_path):
    run_dir = tmp_path / "resumed"
    rc = cli_main(
        [
            "train",
            "--resume",
            str(OLD_CHECKPOINT),
            f"data.root={shapes}",
            f"logging.run_dir={run_dir}",
            "trainer.max_steps=3",
        ]
    )
    assert rc == 0
    old = torch.load(OLD_CHECKPOINT, weights_only=True)
    new = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert old["global_step"] == 2 and new["global_step"] == 3
    assert new["ldm"]["batches_seen"] == 3  # the data stream continued where the old run stopped
    key = "vae.decoder.conv_out.weight"
    assert not torch.equal(old["state_dict"][key], new["state_dict"][key])  # it trained from the old weights
    assert (run_dir / "vae.safetensors").is_file()


def test_a_new_run_refuses_an_earlier_runs_folder_unless_told(shapes, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_train_config("vae", shapes, run_dir, FAST)
    train(cfg)
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RunDirExistsError, match="--resume"):
        train(cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(path)]) == 2
    assert cli_main(["train", "--config", str(path), "--overwrite", "trainer.max_steps=1"]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


def test_checkpoints_are_written_by_rename_and_a_run_keeps_one_last_ckpt(shapes, tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the previous checkpoint")
    before = path.stat().st_ino
    SafeCheckpointIO().save_checkpoint({"global_step": 1}, path)
    assert path.stat().st_ino != before  # a new file renamed over the old one, never the old one rewritten in place
    assert torch.load(path, weights_only=True) == {"global_step": 1} and os.listdir(tmp_path) == ["last.ckpt"]
    # Interval 0 (none) and an interval the run never reaches: the end-of-run save used to add last-v1.ckpt.
    for every in (0, 5):
        run_dir = tmp_path / f"every-{every}"
        train(tiny_train_config("vae", shapes, run_dir, [*FAST, f"logging.checkpoint_every_n_steps={every}"]))
        assert cli_main(["train", "--resume", str(run_dir), "trainer.max_steps=3"]) == 0
        assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.ckpt"]
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


class SigtermAt(__import__("lightning").pytorch.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: finish the step, then stop


def test_sigterm_saves_then_reports_143(shapes, tmp_path):
    cfg = tiny_train_config("vae", shapes, tmp_path / "run", [*FAST, "trainer.max_steps=50"])
    with pytest.raises(TrainingStopped, match="SIGTERM") as stopped:
        train(cfg, extra_callbacks=[SigtermAt(2)])
    assert stopped.value.exit_code == 143
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
