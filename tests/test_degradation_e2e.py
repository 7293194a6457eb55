"""Delegation with graceful degradation, with real gateway and worker processes on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import free_port
from tests.processes import gateway, rss_mb, start_worker, stop, wait_for

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]


def ask(base: str, client: httpx.Client, tier: str = "transformer", **extra) -> dict:
    response = client.post(f"{base}/v1/predict", json={
        "molecules": MOLECULES, "endpoints": ["logbb", "solubility"], "tier": tier, **extra},
        timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def logbb_provenance(body: dict) -> list[dict]:
    return [r["predictions"]["logbb"]["provenance"] for r in body["results"]]


def test_worker_killed_mid_load_no_request_fails_and_answers_come_back(transformer_registry):
    port = free_port()
    worker = start_worker(transformer_registry.root, port)
    try:
        with gateway(transformer_registry.root, [f"http://127.0.0.1:{port}"]) as (base, _):
            with httpx.Client() as client:
                wait_until = time.monotonic() + 10
                while ask(base, client)["tiers"]["logbb"] != "transformer":
                    assert time.monotonic() < wait_until, "gateway never routed to the worker"
                    time.sleep(0.1)
                body = ask(base, client)
                assert all(p["tier"] == "transformer" and not p.get("degraded")
                           for p in logbb_provenance(body))
                # solubility has no transformer: answered by the fast tier, flagged as such.
                assert body["degraded"]["solubility"] == "no_transformer_model"

                outcomes: list[tuple[float, int, dict | None]] = []
                stop_load = threading.Event()

                def load() -> None:
                    with httpx.Client() as own:
                        while not stop_load.is_set():
                            response = own.post(f"{base}/v1/predict", json={
                                "molecules": MOLECULES, "endpoints": ["logbb"], "tier": "transformer"},
                                timeout=10)
                            outcomes.append((time.monotonic(), response.status_code,
                                             response.json() if response.status_code == 200 else None))

                thread = threading.Thread(target=load)
                thread.start()
                time.sleep(1.0)
                killed_at = time.monotonic()
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                time.sleep(2.0)
                restarted_at = time.monotonic()
                worker = start_worker(transformer_registry.root, port)
                back = None
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if outcomes and outcomes[-1][2] and outcomes[-1][2]["tiers"]["logbb"] == "transformer" \
                            and outcomes[-1][0] > restarted_at:
                        back = outcomes[-1][0]
                        break
                    time.sleep(0.1)
                stop_load.set()
                thread.join()
        assert outcomes and all(status == 200 for _, status, _ in outcomes), "a request failed"
        after_kill = [b for t, _, b in outcomes if killed_at + 0.05 < t < restarted_at]
        assert after_kill, "no request ran while the worker was down"
        for body in after_kill:
            for provenance in logbb_provenance(body):
                assert provenance["tier"] == "fast" and provenance["degraded"] is True
                assert provenance["degraded_reason"] in {
                    "worker_unreachable", "circuit_open", "deadline_exceeded"}
        assert back is not None, "answers did not return to the transformer tier"
    finally:
        stop(worker)


@pytest.fixture(scope="module")
def fake_worker():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_worker", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{port}/v1/models")
    yield f"http://127.0.0.1:{port}"
    stop(process)


def set_mode(worker_url: str, mode: str) -> None:
    httpx.post(f"{worker_url}/control", json={"mode": mode}, timeout=5).raise_for_status()


def test_misbehaving_worker_is_labelled_and_the_breaker_opens_and_closes(trained_registry, fake_worker):
    set_mode(fake_worker, "ok")
    with gateway(trained_registry.root, [fake_worker]) as (base, _), httpx.Client() as client:
        deadline = time.monotonic() + 10
        while ask(base, client)["tiers"]["logbb"] != "transformer":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert logbb_provenance(ask(base, client))[0]["model_id"] == "logbb/transformer"
        # In "auto", the fake's far better held-out RMSE chooses nothing, even once it lists the
        # live fast model's split as its evidence: the test split never picks a tier, and a
        # transformer has no out-of-fold or shared validation evidence. It answers when asked.
        assert ask(base, client, tier="auto")["tiers"]["logbb"] == "fast"
        fast = trained_registry.latest("logbb", kind="gbm")
        httpx.post(f"{fake_worker}/control", json={"mode": "ok", "evidence": {
            "shared_with": f"logbb v{fast.version} (gbm)",
            "data_sha256": fast.manifest["files"]["data.csv"]["sha256"]}}, timeout=5).raise_for_status()
        time.sleep(1.0)  # a few health probes: the gateway has read the new listing
        assert ask(base, client, tier="auto")["tiers"]["logbb"] == "fast"

        expectations = [("error500", "worker_error"), ("garbage", "worker_error"),
                        ("overloaded", "worker_overloaded"), ("slow", "deadline_exceeded"),
                        ("hang", "deadline_exceeded")]
        for mode, reason in expectations:
            set_mode(fake_worker, mode)
            started = time.monotonic()
            body = ask(base, client, deadline_ms=300)
            elapsed = time.monotonic() - started
            provenance = logbb_provenance(body)[0]
            assert provenance["tier"] == "fast" and provenance["degraded"], mode
            assert provenance["degraded_reason"] in {reason, "circuit_open"}, (mode, provenance)
            assert elapsed < 2.0, (mode, elapsed)
            set_mode(fake_worker, "ok")
            time.sleep(1.3)  # let an opened breaker reach half-open and be probed back
            ask(base, client)

        # Three consecutive failures open the breaker: later answers say so without waiting.
        set_mode(fake_worker, "error500")
        reasons = [logbb_provenance(ask(base, client))[0]["degraded_reason"] for _ in range(6)]
        assert reasons[-1] == "circuit_open", reasons
        status = client.get(f"{base}/v1/status").json()
        assert status["transformer"]["workers"][0]["breaker"] == "open"
        calls_before = httpx.get(f"{fake_worker}/calls").json()["calls"]
        ask(base, client)
        assert httpx.get(f"{fake_worker}/calls").json()["calls"] == calls_before  # not called
        metrics = client.get(f"{base}/metrics").text
        assert 'molserve_degraded_answers_total{endpoint="logbb",reason="circuit_open"}' in metrics

        set_mode(fake_worker, "ok")
        deadline = time.monotonic() + 10
        while ask(base, client)["tiers"]["logbb"] != "transformer":
            assert time.monotonic() < deadline, "breaker never closed again"
            time.sleep(0.2)
        assert client.get(f"{base}/v1/status").json()["transformer"]["workers"][0]["breaker"] == "closed"
        # Latency per endpoint and tier: the transformer's answers and the fast tier's hedges.
        metrics = client.get(f"{base}/metrics").text
        for tier in ("transformer", "fast"):
            line = next(x for x in metrics.splitlines()
                        if x.startswith(f'molserve_tier_seconds_count{{endpoint="logbb",tier="{tier}"}}'))
            assert float(line.split()[-1]) >= 1


def test_many_clients_against_a_slow_worker_stay_bounded(trained_registry, fake_worker):
    set_mode(fake_worker, "slow")
    with gateway(trained_registry.root, [fake_worker], MOLSERVE_REMOTE_MAX_QUEUE=64,
                 MOLSERVE_BREAKER_FAILURES=1000) as (base, process):
        time.sleep(0.5)
        before = rss_mb(process.pid)

        def one(i: int) -> tuple[int, str]:
            with httpx.Client() as client:
                response = client.post(f"{base}/v1/predict", timeout=20, json={
                    "molecules": [MOLECULES[i % 4]] * 4, "endpoints": ["logbb"],
                    "tier": "transformer", "deadline_ms": 250})
                body = response.json()
                return response.status_code, body["results"][0]["predictions"]["logbb"]["provenance"].get(
                    "degraded_reason", "")

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(one, range(400)))
        after = rss_mb(process.pid)
        status = httpx.get(f"{base}/v1/status").json()
    set_mode(fake_worker, "ok")
    assert all(code == 200 for code, _ in results)
    assert {reason for _, reason in results} <= {"deadline_exceeded", "worker_overloaded"}
    assert after - before < 40, (before, after)
    queued = status["transformer"]["workers"][0]["queue"].get("logbb", 0)
    assert queued <= 64


def test_two_workers_are_balanced_and_a_broken_one_is_ejected_then_probed_back(trained_registry,
                                                                                fake_worker):
    port = free_port()
    second = subprocess.Popen([sys.executable, "-m", "tests.fake_worker", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broken = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{broken}/v1/models")
        set_mode(fake_worker, "ok")
        set_mode(broken, "error500")
        with gateway(trained_registry.root, [fake_worker, broken]) as (base, _), httpx.Client() as client:
            deadline = time.monotonic() + 10
            while not all(w["models"] for w in client.get(f"{base}/v1/status").json()
                          ["transformer"]["workers"]):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            answers = [ask(base, client) for _ in range(30)]
            # Every answer came from the transformer tier: a failed call was retried on the
            # healthy worker (within the retry budget) or the broken one was already ejected.
            tiers = [a["tiers"]["logbb"] for a in answers]
            assert tiers.count("transformer") >= 27, tiers
            workers = {w["url"]: w for w in client.get(f"{base}/v1/status").json()["transformer"]["workers"]}
            assert workers[broken]["breaker"] in ("open", "half_open")
            assert workers[fake_worker]["breaker"] == "closed"
            set_mode(broken, "ok")
            deadline = time.monotonic() + 10
            while {w["breaker"] for w in client.get(f"{base}/v1/status").json()["transformer"]["workers"]} \
                    != {"closed"}:
                assert time.monotonic() < deadline, "the repaired worker was never probed back"
                ask(base, client)
                time.sleep(0.2)
            calls_before = httpx.get(f"{broken}/calls").json()["calls"]
            for _ in range(20):
                ask(base, client)
            assert httpx.get(f"{broken}/calls").json()["calls"] > calls_before  # it takes load again
    finally:
        stop(second)


def test_request_id_travels_to_the_worker_and_back(trained_registry, fake_worker, tmp_path):
    set_mode(fake_worker, "ok")
    with gateway(trained_registry.root, [fake_worker], MOLSERVE_LOG_JSON="true",
                 MOLSERVE_ACCESS_LOG="true") as (base, process), \
            httpx.Client() as client:
        deadline = time.monotonic() + 10
        while ask(base, client)["tiers"]["logbb"] != "transformer":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        response = client.post(f"{base}/v1/predict", headers={"x-request-id": "trace-42"}, json={
            "molecules": ["CCO"], "endpoints": ["logbb"], "tier": "transformer"})
        assert response.headers["x-request-id"] == "trace-42"
        assert response.json()["request_id"] == "trace-42"
        seen = httpx.get(f"{fake_worker}/calls").json()["request_ids"]
        assert any(ids and "trace-42" in ids.split(",") for ids in seen), seen
        generated = client.post(f"{base}/v1/predict", json={"molecules": ["CCO"]})
        assert len(generated.headers["x-request-id"]) == 16
    with open(process.log_path) as handle:
        log_lines = handle.read().splitlines()
    import json as _json

    entries = [_json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(e.get("request_id") == "trace-42" and e.get("path") == "/v1/predict" for e in entries)
    assert not any("t0ken" in line for line in log_lines)  # the worker token is never logged
