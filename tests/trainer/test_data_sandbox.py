"""The data sandbox: paths outside the data root are refused (exit 64), paths inside are read.

The refusals run the trainer as a Job does, in its own process, and check the exit code, the message
(field, the path as given, where it resolves to, the fix) and that nothing was written to the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.trainer.helpers import make_config, run_trainer

from continual_trainer.config import TrainerConfig
from continual_trainer.data import LocalSource, load_batch
from continual_trainer.exitcodes import ExitCode
from continual_trainer.sandbox import OutsideDataRootError, confined_base_model

OUTSIDE_TEXT = "root:x:0:0:secret line outside the volume\n"


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A volume (the data root) holding a run folder, with a 'secret' text file beside it (outside)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_text(OUTSIDE_TEXT)
    vol = tmp_path / "volume"
    (vol / "run").mkdir(parents=True)
    (vol / "data").mkdir()
    (vol / "data" / "ok.txt").write_text("a line on the volume\nanother one\n")
    return vol


def config_for(volume: Path, model: Path | str, data: str) -> TrainerConfig:
    wire = make_config(volume / "run", Path(model), "b1", volume, data_root=volume).model_dump(by_alias=True)
    wire["batch"]["data"]["path"] = data
    wire["baseModel"]["path"] = str(model)
    return TrainerConfig.model_validate(wire)


def escapes(volume: Path) -> dict[str, str]:
    """Each case from the issue: the data path as written in the config."""
    outside = volume.parent / "outside" / "passwd"
    (volume / "data" / "link").symlink_to(outside)
    folder = volume / "data" / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n")
    (folder / "b.txt").symlink_to(outside)
    return {
        "dotdot": os.path.relpath(outside, volume / "run"),  # ../../outside/passwd
        "absolute": str(outside),
        "symlink": str(volume / "data" / "link"),
        "symlink-in-folder": str(folder),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "symlink-in-folder"])
def test_a_data_path_outside_the_data_root_exits_64_naming_field_path_and_fix(tiny_model, volume, case):
    given = escapes(volume)[case]
    config = config_for(volume, tiny_model, given)
    out = run_trainer(config)
    assert out.code == ExitCode.PERMANENT, out.stderr[-2000:]
    assert out.result is not None
    assert out.result["reason"] == "PathOutsideDataRoot"
    message = out.result["message"]
    spelled = f"{given}, its file b.txt" if case == "symlink-in-folder" else given
    assert message.startswith(f"batch.data.path: {spelled!r} resolves to ")  # the path as given
    assert str((volume.parent / "outside" / "passwd").resolve()) in message  # where it resolves to
    assert f"outside the data root {volume.resolve()} (dataRoot)" in message
    fix = "remove the symlink" if case == "symlink-in-folder" else "point batch.data.path at data"
    assert fix in message
    assert sorted(p.name for p in (volume / "run").iterdir()) == [".lock"]  # nothing recorded or trained
    assert "secret line" not in out.stderr + json.dumps(out.events)


def test_a_base_model_path_through_a_symlink_out_of_the_volume_exits_64(tiny_model, volume):
    (volume / "models").mkdir()
    (volume / "models" / "tiny").symlink_to(tiny_model)  # the model itself lives outside the volume
    config = config_for(volume, "models/tiny", "../data/ok.txt")  # relative: from dataRoot
    out = run_trainer(config)
    assert out.code == ExitCode.PERMANENT
    assert out.result is not None
    message = out.result["message"]
    assert message.startswith("baseModel.path: 'models/tiny' resolves to ")
    assert str(tiny_model.resolve()) in message
    assert "put the model folder on the volume" in message
    assert not (volume / "run" / "ledger").exists()


def test_base_model_paths_on_and_off_the_volume(tmp_path, volume):
    def base(path: str) -> str | None:
        return confined_base_model(config_for(volume, path, "x")).path

    (volume / "models" / "m").mkdir(parents=True)
    (volume / "models" / "alias").symlink_to(volume / "models" / "m")  # stays inside: fine
    assert base("models/m") == str(volume / "models" / "m")  # relative: from the data root
    assert base("models/alias") == str(volume / "models" / "alias")
    assert base(str(volume / "models" / "m")) == str(volume / "models" / "m")
    assert base("/opt/models/baked-into-the-image") == "/opt/models/baked-into-the-image"  # not the volume
    with pytest.raises(OutsideDataRootError, match=r"baseModel.path: '../outside' resolves to"):
        base("../outside")


def test_symlinks_that_stay_inside_the_volume_are_read(volume):
    data = volume / "data"
    (data / "shared.txt").write_text("shared sample\n")
    folder = data / "batch"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "own.txt").write_text("own sample\n")
    (folder / "linked.txt").symlink_to(data / "shared.txt")
    (folder / "alias").symlink_to(data / "ok.txt")
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a link back up: read once
    (data / "top-link").symlink_to(folder, target_is_directory=True)
    loaded = load_batch(LocalSource(data / "top-link", volume))
    assert [s.origin for s in loaded.samples] == [
        "alias:1",
        "alias:2",
        "linked.txt:1",
        "sub/own.txt:1",
    ]
    assert [s.text for s in loaded.samples] == [
        "a line on the volume",
        "another one",
        "shared sample",
        "own sample",
    ]


def test_a_dangling_symlink_or_a_pipe_in_a_folder_batch_is_named(volume):
    folder = volume / "data" / "batch"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n")
    (folder / "gone.txt").symlink_to(volume / "data" / "deleted.txt")
    with pytest.raises(Exception, match=r"gone.txt: neither a regular file nor a folder"):
        load_batch(LocalSource(folder, volume))
    (folder / "gone.txt").unlink()
    os.mkfifo(folder / "pipe")
    with pytest.raises(Exception, match=r"pipe: neither a regular file nor a folder"):
        load_batch(LocalSource(folder, volume))


def test_local_mode_confines_to_the_volume_or_to_the_inbox_a_batch_came_from(tmp_path):
    from continual_operator.local.mode import local_trainer_config

    volume, inbox = tmp_path / "volume", tmp_path / "inbox"
    inbox.mkdir()
    pod = make_config(Path("/data/runs/r"), Path("/data/models/m"), "b1", Path("/data/runs/r/in.jsonl"))
    pod = pod.model_copy(update={"data_root": "/data"})
    local = local_trainer_config(pod, volume, tmp_path / "term.json", inbox)
    assert (local.data_root, local.run_dir) == (str(volume), str(volume / "runs" / "r"))
    from_inbox = pod.model_copy(
        update={
            "batch": pod.batch.model_copy(
                update={"data": pod.batch.data.model_copy(update={"path": str(inbox / "b1.jsonl")})}
            )
        }
    )
    assert local_trainer_config(from_inbox, volume, tmp_path / "t.json", inbox).data_root == str(inbox)
    assert local_trainer_config(from_inbox, volume, tmp_path / "t.json", None).data_root == str(volume)
