"""Settings: flags beat environment beat defaults, and bad values are refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysaga.runtime.settings import TlsFiles, load_settings
from services.payments import config
from services.payments.domain import PaymentLimits


def test_defaults_suit_the_local_cluster() -> None:
    settings = load_settings("ledger", [], {})

    assert settings.grpc_bind == "127.0.0.1:50053"
    assert settings.nats_url == "tls://127.0.0.1:4222"
    assert settings.tls == TlsFiles(Path("certs/ledger.crt"), Path("certs/ledger.key"), Path("certs/ca.crt"))
    assert settings.database_url == "sqlite+aiosqlite:///var/ledger.db"
    assert settings.stream_replicas == 1


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    environment = {"PAYSAGA_GRPC_BIND": "0.0.0.0:7000", "PAYSAGA_DRAIN_TIMEOUT_S": "3", "PAYSAGA_CERTS_DIR": "/etc/ps"}

    from_environment = load_settings("payments", [], environment)
    from_flag = load_settings("payments", ["--grpc-bind", "127.0.0.1:7001", "--drain-timeout-s", "4.5"], environment)

    assert (from_environment.grpc_bind, from_environment.drain_timeout_s) == ("0.0.0.0:7000", 3.0)
    assert from_environment.tls.cert_file == Path("/etc/ps/payments.crt")
    assert (from_flag.grpc_bind, from_flag.drain_timeout_s) == ("127.0.0.1:7001", 4.5)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"PAYSAGA_STREAM_REPLICAS": "2"}, "must be 1, 3 or 5"),
        ({"PAYSAGA_STARTUP_TIMEOUT_S": "0"}, "must be positive"),
        ({"PAYSAGA_DRAIN_TIMEOUT_S": "soon"}, "argument --drain-timeout-s: must be a number, got 'soon'"),
        ({"PAYSAGA_INBOX_RETENTION_S": "86400"}, "the inbox retention must be at least the streams' maximum age"),
        ({"PAYSAGA_OUTBOX_RETENTION_S": "60"}, "the outbox retention must be at least the streams' duplicate window"),
    ],
)
def test_bad_environment_values_stop_the_process_with_a_message(
    environment: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings("inventory", [], environment)

    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_the_payments_service_reads_its_own_limits_beside_the_common_settings() -> None:
    environment = {"PAYSAGA_SAGA_TIMEOUT_S": "12", "PAYSAGA_VELOCITY_LIMIT": "7"}

    settings = load_settings("payments", ["--max-in-flight", "9"], environment, options=config.OPTIONS)

    assert config.payment_limits(settings) == PaymentLimits(
        saga_timeout_s=12.0, max_amount_minor=1_000_000, velocity_limit=7, velocity_window_s=60.0, max_in_flight=9
    )
    assert settings.grpc_bind == "127.0.0.1:50051"


def test_another_service_does_not_take_the_payments_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings("ledger", ["--max-in-flight", "9"], {})

    assert "unrecognized arguments: --max-in-flight 9" in capsys.readouterr().err


def test_a_bad_payments_limit_stops_the_process_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings("payments", [], {"PAYSAGA_VELOCITY_LIMIT": "0"}, options=config.OPTIONS)

    assert stopped.value.code == 2
    assert "argument --velocity-limit: must be positive, got 0" in capsys.readouterr().err


def test_lane_settings_take_some_lanes_and_keep_the_defaults_for_the_rest() -> None:
    settings = load_settings(
        "ledger",
        ["--lane-weights", "critical=8"],
        {"PAYSAGA_LANE_WORKERS": "standard=2", "PAYSAGA_LANE_MAX_ACK_PENDING": "compensation=64"},
    )

    assert settings.lanes.weights == {"critical": 8, "priority": 3, "standard": 1}
    assert settings.lanes.workers == {"compensation": 2, "critical": 3, "priority": 2, "standard": 2}
    assert settings.lanes.max_ack_pending["compensation"] == 64


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lane-weights", "compensation=5", "unknown lane 'compensation'"),  # always first: no weight
        ("--lane-workers", "gold=1", "unknown lane 'gold'"),
        ("--lane-max-ack-pending", "standard=0", "must be positive"),
    ],
)
def test_a_bad_lane_setting_stops_the_process_with_a_message(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load_settings("ledger", [flag, value], {})
    assert message in capsys.readouterr().err
