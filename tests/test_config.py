"""The config object and its JSON form."""

from __future__ import annotations

import json
from pathlib import Path

from config import TrainConfig, load_config, save_config, tf_config_problem


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig(img_height=64, img_width=96, output_dir=tmp_path / "o", n4=False)
    save_config(config, tmp_path / "config.json")

    assert load_config(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["output_dir"] == str(tmp_path / "o")


def test_load_config_ignores_unknown_keys_and_defaults_missing_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"img_height": 128, "from_the_future": 1}')
    config = load_config(tmp_path / "config.json")
    assert config.img_height == 128 and config.img_width == 256
    assert config.data_dir_t1 == Path("dataset/Tr1")


def test_training_on_the_demo_data_scores_the_demo_test_set(monkeypatch):
    from config import DEMO_TEST_DIRS
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    assert TrainConfig().resolved_test_dirs == DEMO_TEST_DIRS
    other = TrainConfig(data_dir_t1=Path("mine/T1"), data_dir_t2=Path("mine/T2"))
    assert other.resolved_test_dirs is None
    chosen = TrainConfig(test_dir_t1=Path("a"), test_dir_t2=Path("b"))
    assert chosen.resolved_test_dirs == (Path("a"), Path("b"))


def test_tf_config_is_checked_as_tensorflow_reads_it():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index in (0, 1, "1"):  # TensorFlow reads a string index as a number
        spec = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        assert tf_config_problem(json.dumps(spec)) is None
    outside = {"cluster": cluster, "task": {"type": "worker", "index": 2}}
    assert "task worker 2 is not one of the cluster's 2" in tf_config_problem(json.dumps(outside))
    assert "Expecting value" in tf_config_problem('{"cluster": ')
    assert tf_config_problem("{}") is None
