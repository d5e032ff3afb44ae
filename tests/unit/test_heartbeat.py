"""component_health: what the beats in Redis say about each component (no services)."""

from __future__ import annotations

from pipeline.heartbeat import FORGET_S, component_health


def _beat(component: str, at: float, pid: int = 1, **detail: object) -> dict[str, object]:
    return {"component": component, "host": "h", "pid": pid, "version": "1", "at": at,
            "uptime_s": 60.0, "detail": detail}


def test_up_stale_down_and_forgotten() -> None:
    now = 10_000.0
    known = {"worker:validate": now - 1, "connect:mqtt": now - 60, "api": now - 12,
             "worker:old": now - FORGET_S - 1}
    beats = [_beat("worker:validate", now - 1, lag=3), _beat("api", now - 12)]
    report = component_health(known, beats, now=now, interval_s=5)
    assert {name: entry["status"] for name, entry in report.items()} == {
        "worker:validate": "up", "api": "stale", "connect:mqtt": "down"}
    assert report["worker:validate"]["instances"][0]["detail"] == {"lag": 3}
    assert report["connect:mqtt"]["instances"] == [] and report["connect:mqtt"]["last_beat_s"] == 60


def test_one_live_instance_of_several_is_enough() -> None:
    now = 500.0
    beats = [_beat("worker:sink-redis", now - 13, pid=1), _beat("worker:sink-redis", now - 2, pid=2)]
    report = component_health({"worker:sink-redis": now - 2}, beats, now=now, interval_s=5)
    entry = report["worker:sink-redis"]
    assert entry["status"] == "up" and [i["pid"] for i in entry["instances"]] == [1, 2]


def test_required_components_never_heard_of_are_down() -> None:
    report = component_health({"api": 99.0}, [_beat("api", 99.0)], now=100.0, interval_s=5,
                              required=["api", "connect:gsm"])
    assert report["api"]["required"] and report["api"]["status"] == "up"
    assert report["connect:gsm"] == {"status": "down", "last_beat_s": None, "instances": [],
                                     "required": True}
    assert not component_health({"api": 99.0}, [], now=100.0)["api"]["required"]
