"""A user's own data without a code edit: folder -> `s4v data prepare` -> `s4v run --dataset FILE`.

Also the dataset file in run configs, eval, data check and sweep files, and the public sets read
from their official split files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from s4v_data.annotations import read_list
from s4v_data.dataset_file import read_dataset_file
from s4v_data.files import check_data_files
from s4v_orchestration.cli import app
from s4v_orchestration.config import ConfigError
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.recipes import DATASET_PRESETS
from s4v_orchestration.sweep.spec import load_sweep_file
from s4v_orchestration.tasks.recognition import RecognitionTask, recognition_data_files
from s4v_orchestration.tasks.retrieval import RetrievalTask, retrieval_layout

runner = CliRunner()
CLASSES = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top")


def _invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200, catch_exceptions=False)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and MLflow's artifacts go to the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def class_folders(synthetic_root: Path, tmp_path: Path) -> Path:
    """4 class folders of 5 MP4 files each (the session's synthetic videos), plus a stray file."""
    folder = tmp_path / "phone videos"
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for index in range(5):
            video = synthetic_root / "videos" / f"vid_{label:02d}_{index:04d}.mp4"
            shutil.copy(video, folder / name / f"clip{index}.mp4")
    (folder / "right_to_left" / "notes.txt").write_text("filmed on Tuesday")
    return folder


def test_a_folder_of_class_folders_trains_evaluates_and_is_recorded_under_its_name(
    in_tmp, class_folders
) -> None:
    out = in_tmp / "prepared"
    result = _invoke(["data", "prepare", class_folders, "--out", out, "--split", "0.6,0.2,0.2",
                      "--name", "arrows"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"skipped \(not videos\)\s*│\s*1\s*│", result.output), result.output
    dataset_yaml = out / "dataset.yaml"
    result = _invoke(["data", "check", "--dataset", dataset_yaml, "--depth", "none"])
    assert result.exit_code == 0, result.output
    assert result.output.count("entries") == 3  # train, val and test lists

    store = f"sqlite:///{in_tmp / 'mlflow.db'}"
    result = _invoke(
        ["run", "recognition", "--dataset", dataset_yaml, "--backbone", "tiny",
         "--pretrained", "none", "--epochs", "1", "--batch-size", "4", "--views", "1x1",
         "--tracking-uri", store, "--set", "data.num_frames=4", "--set", "data.num_workers=0",
         "--set", "cpu_threads=1", "--set", "solver.warmup_epochs=0",
         "--set", "tracking.system_metrics=false", "--set", "tracking.log_checkpoint=false"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("recognition-arrows")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["s4v.dataset"] == "arrows" and "arrows" in run.info.run_name
    assert run.data.params["data.dataset_file"] == str(dataset_yaml)
    assert run.data.params["data.recipe_base"] == "k400"  # appearance
    assert run.data.params["data.source"] == "video"
    assert "test/top1" in run.data.metrics
    # The default output folder carries the name too.
    [best] = (in_tmp / "runs").glob("recognition-arrows-tiny-side4video*/best.pt")

    # The checkpoint evaluates on the dataset file's test split (4 classes x 1 video).
    result = _invoke(["eval", "recognition", "--checkpoint", best, "--dataset", dataset_yaml,
                      "--no-tracking", "--output-dir", in_tmp / "eval"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"num_videos": 4' in (in_tmp / "eval" / "eval.json").read_text()

    # And it predicts labels of the folder's own class names for a new video.
    video = class_folders / "left_to_right" / "clip0.mp4"
    result = _invoke(["predict", best, video, "--top-k", "4", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in CLASSES)


def test_prepare_extracts_frames_resumably_and_leaves_broken_videos_out(in_tmp, synthetic_root):
    folder = in_tmp / "videos"
    for label, name in enumerate(CLASSES[:2]):
        (folder / name).mkdir(parents=True)
        for index in range(3):
            video = synthetic_root / "videos" / f"vid_{label:02d}_{index:04d}.mp4"
            shutil.copy(video, folder / name / f"clip{index}.mp4")
    (folder / CLASSES[0] / "clip9.mp4").write_bytes(b"not a video at all")
    args = ["data", "prepare", folder, "--out", in_tmp / "out", "--split", "0.5,0.5",
            "--extract", "--short-side", "0", "--workers", "1", "--timeout", "20"]  # fmt: skip
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert re.search(r"broken \(left out\)\s*│\s*1\s*│", result.output), result.output
    assert "clip9.mp4" in result.output
    dataset = read_dataset_file(in_tmp / "out" / "dataset.yaml")
    assert dataset.source == "rawframes" and dataset.root == in_tmp / "out" / "rawframes"
    listed = read_list(dataset.lists.train) + read_list(dataset.lists.val)
    assert len(listed) == 6 and all(r.num_frames == 16 for r in listed)
    assert all((dataset.root / r.path / "img_00001.jpg").is_file() for r in listed)

    again = _invoke(args)  # a rerun resumes: nothing is extracted twice
    assert again.exit_code == 0, again.output
    assert re.search(r"frames already there\s*│\s*6 videos", again.output), again.output


def test_a_broken_dataset_file_is_a_one_line_error_naming_its_line(in_tmp) -> None:
    bad = in_tmp / "dataset.yaml"
    bad.write_text(
        "name: mine\nlists: {train: a.txt, val: b.txt}\nlabels: l.csv\nnum_classes: -1\n"
    )
    result = _invoke(["run", "recognition", "--dataset", bad, "--no-tracking"])
    assert result.exit_code == 2
    assert f"error: {bad}:4: num_classes: Input should be greater than 0" in result.output
    assert "Traceback" not in result.output


def test_a_dataset_file_naming_missing_lists_says_so_before_training(in_tmp) -> None:
    path = _dataset_file(in_tmp / "data")
    result = _invoke(["run", "recognition", "--dataset", path, "--no-tracking"])
    assert result.exit_code == 2
    assert f"error: {path.resolve()} names files that are not there: training list" in (
        result.output.replace("\n", " ")
    )


def _dataset_file(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.csv").write_text("id,name\n0,a\n1,b\n")
    path = folder / "dataset.yaml"
    path.write_text(
        "name: mine\nlists: {train: train.txt, val: val.txt, test: test.txt}\n"
        f"labels: labels.csv\nnum_classes: 2\n{extra}"
    )
    return path


def test_a_dataset_file_starts_from_the_recipe_it_names(tmp_path) -> None:
    appearance = load_run_config("recognition", str(_dataset_file(tmp_path / "a")))
    kinetics = DATASET_PRESETS["recognition"]["k400"]
    assert appearance.data.dataset == "mine"
    assert appearance.data.batch_size == kinetics["data"]["batch_size"]
    assert appearance.eval.test_clips == kinetics["eval"]["test_clips"]
    assert appearance.data.test_list == str((tmp_path / "a" / "test.txt").resolve())
    cfg = appearance.with_defaults()
    assert cfg.tracking.experiment == "recognition-mine"
    # the default output folder is named for the dataset file's name, then the start time
    assert re.fullmatch(
        r"recognition-mine-side4video-b16-side4video-\d{8}-\d{6}", cfg.output_dir.name
    )

    motion = load_run_config("recognition", str(_dataset_file(tmp_path / "m", "recipe: motion")))
    assert motion.data.num_sample == 2 and motion.data.rand_augment  # Something-Something's
    with pytest.raises(ConfigError, match="task is recognition; train it with `s4v run recog"):
        load_run_config("retrieval", str(_dataset_file(tmp_path / "a")))


def test_a_sweep_file_names_a_dataset_file_relative_to_itself(tmp_path) -> None:
    _dataset_file(tmp_path / "data")
    sweep = tmp_path / "sweeps" / "lr.yaml"
    sweep.parent.mkdir()
    sweep.write_text(
        "task: recognition\ndataset: ../data/dataset.yaml\n"
        "search_space:\n  solver.lr: {type: choice, values: [0.1, 0.01]}\n"
    )
    spec = load_sweep_file(sweep)
    assert spec.dataset == str((tmp_path / "data" / "dataset.yaml").resolve())
    assert load_run_config(spec.task, spec.dataset).data.dataset == "mine"


def test_a_retrieval_dataset_file_reads_captions_per_split(tmp_path) -> None:
    (tmp_path / "captions.json").write_text('{"a.mp4": ["one", "uno"], "b.mp4": "two"}')
    (tmp_path / "train.txt").write_text("a.mp4\n")
    (tmp_path / "val.txt").write_text("b.mp4\n")
    path = tmp_path / "dataset.yaml"
    path.write_text(
        "name: clips\ntask: retrieval\ncaptions: captions.json\n"
        "lists: {train: train.txt, val: val.txt}\n"
    )
    config = load_run_config("retrieval", str(path)).with_defaults()
    assert config.tracking.experiment == "retrieval-clips"
    RetrievalTask().prepare_data(config, announce=lambda _: None)  # finds every split
    layout, root = retrieval_layout(config), Path(config.data.root)
    assert layout.read(root, "train").captions == (("one", "uno"),)
    assert layout.read(root, "test").video_ids == ("b.mp4",)  # no test list: the val list


def test_a_retrieval_dataset_file_trains_evaluates_and_checks_through_the_cli(
    in_tmp, synthetic_root
) -> None:
    videos = [f"videos/vid_{c:02d}_{i:04d}.mp4" for c in range(4) for i in range(2)]
    rows = [
        f"{v},{CLASSES[int(v[11:13])].replace('_', ' ')} {n}" for v in videos for n in ("a", "b")
    ]
    (in_tmp / "captions.csv").write_text("video,caption\n" + "\n".join(rows) + "\n")
    (in_tmp / "train.txt").write_text("".join(f"{v}\n" for v in videos[::2] + videos[1:4:2]))
    (in_tmp / "val.txt").write_text("".join(f"{v}\n" for v in videos[5::2]))
    path = in_tmp / "dataset.yaml"
    path.write_text(
        f"name: arrows-text\ntask: retrieval\nroot: {synthetic_root}\ncaptions: captions.csv\n"
        "lists: {train: train.txt, val: val.txt}\n"
    )
    result = _invoke(["data", "check", "--dataset", path])
    assert result.exit_code == 0, result.output
    assert re.search(r"captions\s*│\s*12\s*│", result.output), result.output  # 6 train videos x 2
    result = _invoke(
        ["run", "retrieval", "--dataset", path, "--backbone", "tiny", "--pretrained", "none",
         "--epochs", "1", "--batch-size", "3", "--no-tracking", "--set", "data.num_frames=4",
         "--set", "data.num_workers=0", "--set", "cpu_threads=1", "--set", "device=cpu",
         "--set", "solver.warmup_epochs=0"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [best] = (in_tmp / "runs").glob("retrieval-arrows-text-tiny-side4video*/best.pt")
    result = _invoke(["eval", "retrieval", "--checkpoint", best, "--dataset", path,
                      "--no-tracking"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "text->video R@1/5/10" in result.output


def test_ucf101_reads_its_official_split_files_and_data_split_picks_one(tmp_path) -> None:
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Archery\r\n2 Bowling\r\n")
    # Groups 1-2 of each class are the test videos, groups 3-5 the training ones.
    rows = [(f"{c}/v_{c}_g{g:02d}_c01.avi", label, g) for label, c in enumerate(("Archery", "Bowling"))
            for g in range(1, 6)]  # fmt: skip
    train = "".join(f"{video} {label + 1}\r\n" for video, label, g in rows if g > 2)
    (lists / "trainlist01.txt").write_text(train)
    (lists / "testlist01.txt").write_text("".join(f"{video}\r\n" for video, _, g in rows if g <= 2))
    (lists / "trainlist02.txt").write_text(f"{rows[0][0]} 1\r\n")
    config = load_run_config(
        "recognition", "ucf101", overrides=[f"data.root={tmp_path}", "model.preset=tiny",
                                           "model.pretrained=none"]
    ).with_defaults()  # fmt: skip
    assert config.data.source == "video"  # the recipe reads the videos the lists name
    task = RecognitionTask()
    parts = task.build(config)
    assert (len(parts.train_data), len(parts.val_data)) == (6, 4)
    assert parts.extra["class_names"] == ["Archery", "Bowling"]
    assert parts.train_data.records[0].path == "UCF-101/Archery/v_Archery_g03_c01.avi"
    split2 = config.model_copy(update={"data": config.data.model_copy(update={"split": 2})})
    with pytest.raises(FileNotFoundError, match=r"testlist02\.txt"):
        check_data_files(recognition_data_files(split2))
