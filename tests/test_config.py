"""Option resolution: flag > env > config file > default, and librdkafka properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stream_detector.cli import build_parser
from stream_detector.config import COMMAND_OPTS, resolve
from stream_detector.errors import ConfigError


def _resolve(argv: list[str], environ: dict[str, str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    return resolve(args.command, COMMAND_OPTS[args.command], args, environ=environ or {})


TRAIN = ["train", "--input", "x.csv", "--out", "m"]
RUN = [
    "run",
    "--bootstrap-servers",
    "h:9092",
    "--input-topic",
    "in",
    "--output-topic",
    "out",
    "--model",
    "m",
]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "sd.yaml"
    p.write_text(
        "model: lstm\n"
        "train:\n"
        "  epochs: 7\n"
        "  batch_size: 16\n"
        "  learning_rate: 0.01\n"
        "run:\n"
        "  max_batch: 99\n"
        "kafka:\n"
        "  security.protocol: SASL_SSL\n"
        "  sasl.username: from-file\n"
    )
    return p


def test_defaults() -> None:
    cfg = _resolve(TRAIN)
    assert cfg["epochs"] is None and cfg["batch_size"] == 64 and cfg["model"] == "conv1d"
    assert cfg["window"] is None and cfg["threshold_factor"] == 1.5 and cfg["quiet"] is False
    assert cfg["input"] == ["x.csv"] and cfg["out"] == "m"


def test_flag_beats_env_beats_file_beats_default(config_file: Path) -> None:
    env = {"STREAM_DETECTOR_EPOCHS": "5", "STREAM_DETECTOR_BATCH_SIZE": "32"}
    cfg = _resolve(TRAIN + ["--config", str(config_file), "--epochs", "3"], env)
    assert cfg["epochs"] == 3  # flag
    assert cfg["batch_size"] == 32  # env
    assert cfg["model"] == "lstm"  # file, top level
    assert cfg["learning_rate"] == 0.01  # file, command section
    assert cfg["patience"] is None  # default (train: 3, or 30 for wide)


def test_config_file_from_the_environment(config_file: Path) -> None:
    cfg = _resolve(TRAIN, {"STREAM_DETECTOR_CONFIG": str(config_file)})
    assert cfg["epochs"] == 7


def test_env_values_are_typed() -> None:
    env = {
        "STREAM_DETECTOR_QUIET": "yes",
        "STREAM_DETECTOR_TRAIN_FRACTION": "0.4",
        "STREAM_DETECTOR_INPUT": "a.csv,b.csv",
    }
    cfg = _resolve(["train", "--out", "m"], env)
    assert cfg["quiet"] is True and cfg["train_fraction"] == 0.4
    assert cfg["input"] == ["a.csv", "b.csv"]
    assert _resolve(TRAIN, env)["input"] == ["x.csv"]  # the flag still wins


def test_kafka_properties_merge_file_env_and_flags(config_file: Path) -> None:
    env = {
        "STREAM_DETECTOR_KAFKA_SASL_PASSWORD": "s3cret",
        "STREAM_DETECTOR_KAFKA_SASL_USERNAME": "from-env",
    }
    cfg = _resolve(
        RUN
        + [
            "--config",
            str(config_file),
            "--kafka",
            "sasl.mechanism=PLAIN",
            "--kafka",
            "security.protocol=SSL",
        ],
        env,
    )
    assert cfg["kafka"] == {
        "security.protocol": "SSL",  # flag over file
        "sasl.username": "from-env",  # env over file
        "sasl.password": "s3cret",
        "sasl.mechanism": "PLAIN",
    }
    assert cfg["max_batch"] == 99  # the run section of the file
    assert cfg["model"] == "m"  # the flag over the file's top level


def test_sasl_password_env_maps_to_the_dotted_property() -> None:
    cfg = _resolve(RUN, {"STREAM_DETECTOR_KAFKA_SASL_PASSWORD": "pw"})
    assert cfg["kafka"]["sasl.password"] == "pw"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="STREAM_DETECTOR_EPOCHS.*integer"):
        _resolve(TRAIN, {"STREAM_DETECTOR_EPOCHS": "many"})


def test_bad_choice_in_env_is_refused() -> None:
    with pytest.raises(ConfigError, match="--model must be one of"):
        _resolve(TRAIN, {"STREAM_DETECTOR_MODEL": "transformer"})


def test_required_option_may_come_from_env() -> None:
    cfg = _resolve(["train", "--input", "x.csv"], {"STREAM_DETECTOR_OUT": "from-env"})
    assert cfg["out"] == "from-env"
    with pytest.raises(ConfigError, match="--out is required"):
        _resolve(["train", "--input", "x.csv"])


def test_unknown_option_in_the_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown option.*epoch"):
        _resolve(TRAIN + ["--config", str(p)])


def test_missing_or_invalid_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        _resolve(TRAIN + ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _resolve(TRAIN + ["--config", str(bad)])
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        _resolve(TRAIN + ["--config", str(notmap)])


def test_model_params_as_pairs() -> None:
    cfg = _resolve(TRAIN + ["--model-param", "units=8", "--model-param", "unroll=true"])
    assert cfg["model_param"] == {"units": "8", "unroll": "true"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _resolve(TRAIN + ["--model-param", "units"])


def test_inference_workers_follow_the_cpus_and_fine_tuning_keeps_one() -> None:
    from stream_detector.errors import InputError
    from stream_detector.models.base import available_cpus, plan_threads
    from stream_detector.service import ServiceConfig

    def workers(*extra: str) -> int:
        return ServiceConfig.from_options(_resolve([*RUN, *extra])).inference_workers

    cpus = available_cpus()
    assert workers() == min(cpus, 4)
    assert workers("--inference-workers", "3") == 3
    # fine-tuning changes the weights between calls: never two calls at once
    assert workers("--inference-workers", "3", "--fine-tune-every", "256") == 1
    assert plan_threads() == (min(cpus, 4), max(1, cpus // min(cpus, 4)))
    assert plan_threads(1) == (1, cpus) and plan_threads(2, 5) == (2, 5)
    with pytest.raises(InputError, match="--inference-workers"):
        workers("--inference-workers", "-1")


def test_timestamp_policy_is_one_option_shared_by_train_score_and_run(config_file: Path) -> None:
    from stream_detector.config import TIMESTAMP_POLICY_OPT

    for command in ("train", "score", "run"):
        assert TIMESTAMP_POLICY_OPT in COMMAND_OPTS[command]
    assert _resolve(TRAIN)["timestamp_policy"] == "accept"
    assert _resolve(RUN, {"STREAM_DETECTOR_TIMESTAMP_POLICY": "dlq"})["timestamp_policy"] == "dlq"
    cfg = _resolve(RUN + ["--timestamp-policy", "drop"], {"STREAM_DETECTOR_TIMESTAMP_POLICY": "dlq"})
    assert cfg["timestamp_policy"] == "drop"
    with pytest.raises(ConfigError, match="--timestamp-policy must be one of accept, drop, dlq"):
        _resolve(TRAIN, {"STREAM_DETECTOR_TIMESTAMP_POLICY": "sort"})


@pytest.mark.parametrize("prop", ["enable.auto.commit=true", "enable.auto.offset.store=true",
                                  "acks=1", "request.required.acks=0",
                                  "enable.idempotence=false", "group.id=other"])
def test_delivery_critical_kafka_overrides_are_refused(prop: str, capsys) -> None:
    from stream_detector.cli import main
    from stream_detector.service import ServiceConfig

    key = prop.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        ServiceConfig.from_options(_resolve(RUN + ["--kafka", prop]))
    # the command: exit 2, one line naming the property (before the model is even read)
    assert main(RUN + ["--kafka", "client.rack=r1", "--kafka", prop]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "client.rack" not in err, err


def test_other_kafka_properties_still_pass() -> None:
    from stream_detector.service import ServiceConfig

    cfg = ServiceConfig.from_options(_resolve(RUN + ["--kafka", "linger.ms=20",
                                                     "--kafka", "session.timeout.ms=6000"]))
    assert cfg.kafka == {"linger.ms": "20", "session.timeout.ms": "6000"}


def test_every_boolean_can_be_turned_off_over_env_and_file() -> None:
    env = {"STREAM_DETECTOR_QUIET": "yes"}
    assert _resolve(TRAIN, env)["quiet"] is True
    assert _resolve(TRAIN + ["--no-quiet"], env)["quiet"] is False


def test_help_lists_every_choice_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "(oneof:lstm,conv1d,conv1d-seq,cnn-lstm,bilstm,feedforward)" in text
    assert "(default:0)" in text  # the seed, a default of 0, is shown too
    assert "--no-quiet" in text and "(default:off)" in text


def test_exactly_once_is_not_an_option(capsys) -> None:
    """Removed, not left half-working: `run --exactly-once` is an unknown option (exit 2),
    and the transactional id cannot come in through --kafka either."""
    from stream_detector.cli import main

    with pytest.raises(SystemExit) as exc:
        main(RUN + ["--exactly-once"])
    assert exc.value.code == 2
    assert "--exactly-once" in capsys.readouterr().err
    assert main(RUN + ["--kafka", "transactional.id=detector-0"]) == 2
    assert "transactional.id" in capsys.readouterr().err


def test_feedback_options_from_env_and_flags_and_their_bounds() -> None:
    from stream_detector.errors import InputError
    from stream_detector.service import ServiceConfig

    cfg = ServiceConfig.from_options(_resolve(
        [*RUN, "--feedback-bound", "2"], {"STREAM_DETECTOR_FEEDBACK_TOPIC": "fb",
                                          "STREAM_DETECTOR_FEEDBACK_HALF_LIFE_S": "3600"}))
    assert cfg.feedback_topic == "fb"
    assert (cfg.feedback.margin, cfg.feedback.bound, cfg.feedback.half_life_s,
            cfg.feedback.max_pending) == (0.5, 2.0, 3600.0, 10_000)
    assert ServiceConfig.from_options(_resolve(RUN)).feedback_topic is None  # off
    for flag, value in (("--feedback-bound", "0.9"), ("--feedback-margin", "-1"),
                        ("--feedback-half-life-s", "0")):
        with pytest.raises(InputError, match=flag):
            ServiceConfig.from_options(_resolve([*RUN, flag, value]))
    fb = _resolve(["feedback", "--bootstrap-servers", "h:9092", "--topic", "fb",
                   "--incident-id", "0123456789abcdef", "--key", "k"],
                  {"STREAM_DETECTOR_LABEL": "true_positive"})
    assert fb["label"] == "true_positive" and fb["by"] is None
