"""The fleet model (fl_metamorphosis/fleet/) against hand-computed cases, and a fleet run through the round loop."""

import pytest
from conftest import TINY_OVERRIDES
from inprocess_grid import InProcessGrid

from clients.client_app import app as client_app
from fl_metamorphosis.config import ConfigError, build_config
from fl_metamorphosis.fleet import DeviceClass, Fleet, FleetConfig, Work, assign_classes
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.metrics.fleet_report import write_fleet_report
from fl_metamorphosis.privacy.device_state import DeviceState
from server import round_loop
from server.fleet_grid import FleetGrid, FleetParticipation
from server.round_loop import FlowerParticipation, PlainExchange, run_federated
from server.secure_aggregation import SecureExchange


def _class(name, share, speed=1.0, *, up=8.0, down=8.0, availability=1.0, dropout=0.0, memory=4096):
    return DeviceClass(
        name=name,
        share=share,
        speed=speed,
        memory_mb=memory,
        uplink_mbps=up,
        downlink_mbps=down,
        availability=availability,
        dropout=dropout,
    )


def _fleet(classes, population, **kw):
    cfg = FleetConfig(enabled=True, classes=classes, train_ms_per_pair=1.0, release_ms_per_pair=0.5, **kw)
    return Fleet(cfg, population)


def test_the_shares_are_met_exactly_and_the_slots_shuffled_by_the_seed():
    classes = [_class(n, s) for n, s in [("a", 0.3), ("b", 0.2), ("c", 0.1), ("d", 0.1), ("e", 0.3)]]
    labels = assign_classes(classes, 10, seed=0)
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 2, 3, 4, 4, 4]
    assert (labels == assign_classes(classes, 10, seed=0)).all()
    assert any((assign_classes(classes, 10, seed=s) != labels).any() for s in range(1, 5))
    # 7 devices, shares 0.5 / 0.5: 3.5 each, the remainder to the first
    assert sorted(assign_classes(classes[:1] + [_class("z", 0.7)], 7, 0).tolist()) == [0, 0, 1, 1, 1, 1, 1]


def test_a_device_time_is_download_compute_upload():
    fleet = _fleet([_class("fast", 1.0, speed=2.0, up=4.0, down=8.0)], 1)
    # 1e6 bytes down at 8 Mbit/s: 1 s; 1000 pairs at 1 ms / speed 2: 0.5 s; 0.5e6 bytes up at 4 Mbit/s: 1 s
    assert fleet.seconds(Work(0, 1000, 1_000_000, 500_000), 1.0) == pytest.approx(2.5)


def _phase_fleet(**kw):
    """Slots 0-3; class 'slow' (speed 0.5) and 'fast' (speed 1). No transfer: time = pairs * ms / speed."""
    fleet = _fleet([_class("fast", 0.5), _class("slow", 0.5, speed=0.5)], 4, **kw)
    fleet.class_index[:] = [0, 0, 1, 1]  # fixed for the hand computation
    return fleet


def test_without_drops_the_round_ends_at_the_last_reply():
    fleet = _phase_fleet(deadline_s=100.0)
    works = [Work(s, 1000 * (s + 1), 0, 0) for s in range(4)]  # 1, 2, 6, 8 s
    phase = fleet.train_phase(1, works)
    assert [(a.slot, a.seconds, a.outcome) for a in phase.arrivals] == [
        (0, 1.0, "arrived"),
        (1, 2.0, "arrived"),
        (2, 6.0, "arrived"),
        (3, 8.0, "arrived"),
    ]
    assert phase.seconds == 8.0


def test_the_deadline_makes_stragglers_and_target_replies_end_the_round_early():
    works = [Work(s, 1000 * (s + 1), 0, 0) for s in range(4)]  # 1, 2, 6, 8 s
    late = _phase_fleet(deadline_s=5.0).train_phase(1, works)
    assert [a.outcome for a in late.arrivals] == ["arrived", "arrived", "straggler", "straggler"]
    assert late.seconds == 5.0 and late.count("straggler") == 2
    early = _phase_fleet(deadline_s=100.0, target_replies=3).train_phase(1, works)
    assert [a.outcome for a in early.arrivals] == ["arrived", "arrived", "arrived", "straggler"]
    assert early.seconds == 6.0


def test_a_dropped_device_never_arrives_and_the_server_waits_for_the_deadline():
    fleet = _fleet([_class("steady", 0.5), _class("flaky", 0.5, dropout=0.999)], 4, deadline_s=30.0)
    fleet.class_index[:] = [0, 0, 1, 1]
    assert fleet.drops(1).tolist() == [False, False, True, True]  # 0.999: drawn below for this seed
    phase = fleet.train_phase(1, [Work(s, 1000, 0, 0) for s in range(4)])
    assert {a.slot: a.outcome for a in phase.arrivals} == {0: "arrived", 1: "arrived", 2: "dropped", 3: "dropped"}
    assert phase.seconds == 30.0  # it cannot know they dropped


def test_availability_follows_the_trace_then_the_class_and_memory(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("device,round,available\n0,1,0\n2,1,1\n2,2,0\n")
    classes = [_class("on", 0.5), _class("off", 0.5, availability=0.0)]
    fleet = _fleet(classes, 4, trace=str(trace))
    fleet.class_index[:] = [0, 0, 1, 1]
    assert fleet.available(1) == [1, 2]  # slot 0 off by the trace, slot 2 on by the trace
    assert fleet.available(2) == [0, 1]
    small = Fleet(FleetConfig(enabled=True, classes=[_class("tiny", 1.0, memory=256)]), 3, round_memory_mb=700)
    assert small.available(1) == []  # a local round does not fit in 256 MB


@pytest.mark.parametrize(
    ("text", "message"),
    [("dev,round,available\n", "header must name"), ("device,round,available\n0,one,1\n", "line 2")],
)
def test_a_malformed_trace_is_named(tmp_path, text, message):
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    with pytest.raises(ValueError, match=message):
        _fleet([_class("a", 1.0)], 2, trace=str(trace))


def test_fleet_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="shares must sum to 1"):
        build_config(
            None,
            [
                "federated.fleet.enabled=true",
                'federated.fleet.classes=[{name="a", share=0.5, '
                "speed=1, memory_mb=1024, uplink_mbps=1, downlink_mbps=1, availability=1, dropout=0}]",
            ],
        )
    with pytest.raises(ConfigError, match="federated.fleet.file: no file"):
        build_config(None, ["federated.fleet.enabled=true", f"federated.fleet.file={tmp_path / 'none.toml'}"])
    with pytest.raises(ConfigError, match="secure_aggregation=false"):
        build_config(None, ["federated.fleet.enabled=true", "federated.secure_aggregation=true"])
    default = build_config(None, ["federated.fleet.enabled=true"]).federated.fleet
    assert [c.name for c in default.classes] == ["rpi4", "rpi5", "jetson-nano", "jetson-orin", "phone"]
    assert sum(c.share for c in default.classes) == pytest.approx(1.0)


def test_the_fleet_and_secure_aggregation_are_attachments_chosen_once_at_start(tmp_path):
    """The round's stages call the run's attachments; ``start`` chooses them from the config."""

    def started(*overrides):
        cfg = build_config(None, [*TINY_OVERRIDES, "federated.num_devices=3", *overrides])
        return round_loop.start(cfg, tmp_path / "_".join(overrides or ("plain",)), resume=False)

    plain = started()
    assert type(plain.participation) is FlowerParticipation and type(plain.exchange) is PlainExchange
    fleet = started("federated.fleet.enabled=true")
    assert type(fleet.participation) is FleetParticipation and type(fleet.exchange) is PlainExchange
    grid = InProcessGrid(client_app, 3, tmp_path / "devices")
    assert isinstance(fleet.participation.connect(grid, fleet), FleetGrid)  # the grid every stage then uses
    secure = started("federated.secure_aggregation=true")
    assert type(secure.participation) is FlowerParticipation and type(secure.exchange) is SecureExchange


@pytest.mark.slow(seconds=20)
def test_dropouts_are_missing_replies_the_round_survives_and_devices_count_what_they_trained(tmp_path):
    """10 devices, 3 rounds, 30 % dropout (a device's reply is lost after it trained) and a deadline."""
    flaky = (
        'federated.fleet.classes=[{name="flaky", share=1.0, speed=1, memory_mb=4096, uplink_mbps=10, '
        "downlink_mbps=10, availability=1.0, dropout=0.3}]"
    )
    cfg = build_config(
        None,
        [
            *TINY_OVERRIDES,
            'methods=["metamorphosis"]',
            "federated.num_devices=10",
            "federated.rounds=3",
            "federated.fleet.enabled=true",
            flaky,
            "federated.fleet.deadline_s=60",
            "federated.fleet.seed=3",
            "audit.enabled=false",
        ],
    )
    grid = InProcessGrid(client_app, 10, tmp_path / "devices")
    summary = run_federated(grid, cfg, tmp_path, audit=False)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:  # every sampled device is answered, dropped, late, declined or rejected
        assert (
            r["sampled"] == r["answered"] + r["fleet.dropped"] + r["fleet.stragglers"] + r["declined"] + r["rejected"]
        )
        assert r["fleet.round_seconds"] == pytest.approx(r["fleet.train_seconds"] + r["fleet.features_seconds"])
        assert r["fleet.bytes_down"] > 0 and r["fleet.bytes_up"] > 0
    dropped = sum(r["fleet.dropped"] for r in rows)
    assert dropped > 0 and all(r["aggregated"] for r in rows)
    assert rows[-1]["fleet.elapsed_seconds"] == pytest.approx(sum(r["fleet.round_seconds"] for r in rows))
    # a round with a dropped device waits for the deadline: it cannot know the reply will never come
    assert all(r["fleet.train_seconds"] == 60.0 for r in rows if r["fleet.dropped"])
    # each device counted every round it trained; the server only the replies that reached it
    server = summary["device_privacy"]
    own = {d: DeviceState.load(tmp_path / "devices" / str(d)).history.steps for d in range(10)}
    assert all(own[int(d)] >= v["steps"] for d, v in server.items())
    assert sum(own.values()) > sum(v["steps"] for v in server.values())
    # the report shows both views, the lost devices per round, and accuracy against simulated time
    report = write_fleet_report(tmp_path, cfg, summary)
    assert report["totals"]["fleet.dropped"] == dropped
    assert report["devices_ahead_of_server"] == sorted(
        d for d in own if own[d] > server.get(str(d), {}).get("steps", 0)
    )
    assert report["devices_ahead_of_server"]  # the last round dropped someone: the server never saw it
    assert (tmp_path / "fleet.png").exists() and "## Fleet" in (tmp_path / "fleet.md").read_text()


def test_deploy_refuses_a_simulated_fleet(tmp_path):
    from fl_metamorphosis.deployment import launch as deploy
    from simulations.simulate import APP_DIR

    cfg = build_config(None, ["federated.fleet.enabled=true"])
    with pytest.raises(ConfigError, match="federated.fleet.enabled=false"):
        deploy.run(cfg, tmp_path / "out", tmp_path / "state", app_dir=APP_DIR)
    assert not (tmp_path / "out").exists()
