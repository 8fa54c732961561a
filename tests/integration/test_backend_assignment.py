"""What the router's pool-down rule rests on, checked on real Ray Serve (its own small Ray
instance in a subprocess, no engine, ~30 s): Serve's assignment future tells a request a
replica took from one waiting for a replica, the pool's health check fails while its app
is deleted, and the replica still answers what it took. So the router ends only waiting
requests with 503 when a pool is found down (tests/unit/ingress/test_ingress_health.py
checks the router's side with a fake backend)."""

from __future__ import annotations

from pathlib import Path

from stackprobe import run_probe

PROBE = Path(__file__).with_name("serve_assignment_probe.py")


def test_serve_assignment_and_drain_as_the_router_assumes():
    facts = run_probe(PROBE)
    print(f"\n[assignment] {facts}")
    assert facts["taken_assigned"] is True
    assert facts["waiting_assigned"] is False and facts["waiting_assigned_at_end"] is False
    assert facts["check_during_drain"] != "answered"  # the pool looks down while it drains...
    assert facts["taken_items"] == ["first", "second"]  # ...and still answers what it took
