"""The transformer worker: dynamic batching, bounded queue, auth, API."""

import asyncio
import time

import pytest

from molserve.prediction.batcher import DynamicBatcher, Overloaded


def test_concurrent_requests_are_batched_and_answered_in_order():
    calls: list[list[str]] = []

    def predict(smiles):
        calls.append(list(smiles))
        return [f"answer:{s}" for s in smiles]

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=8, max_wait_s=0.02)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"C{i}", f"N{i}"]) for i in range(4)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[f"answer:C{i}", f"answer:N{i}"] for i in range(4)]
    assert len(calls) == 1 and len(calls[0]) == 8  # four requests, one model call


def test_batches_respect_the_maximum_and_group_similar_lengths():
    calls: list[list[str]] = []

    def predict(smiles):
        calls.append(list(smiles))
        return smiles

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=4, max_wait_s=0.01)
        short = ["C", "CC", "CO", "CN"]
        long = ["C" * 40, "C" * 41, "C" * 42, "C" * 43]
        mixed = [short[0], long[0], short[1], long[1], short[2], long[2], short[3], long[3]]
        task = asyncio.ensure_future(batcher.submit(mixed))
        await asyncio.sleep(0)  # all eight are queued before the consumer starts
        batcher.start()
        answer = await task
        await batcher.stop()
        return answer, mixed

    answer, mixed = asyncio.run(scenario())
    assert answer == mixed
    assert all(len(c) <= 4 for c in calls)
    assert sorted(map(len, calls[0])) == [1, 2, 2, 2]  # the short ones went together


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    def slow(smiles):
        time.sleep(0.2)
        return smiles

    async def scenario():
        batcher = DynamicBatcher(slow, max_batch=2, max_wait_s=0.001, max_queue=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["C"] * 4))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(["N"])
        assert refused.value.retry_after_s > 0
        await first
        await batcher.stop()

    asyncio.run(scenario())


def test_a_failing_model_fails_its_callers_not_the_batcher():
    state = {"fail": True}

    def flaky(smiles):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("CUDA out of memory")
        return smiles

    async def scenario():
        batcher = DynamicBatcher(flaky, max_batch=4, max_wait_s=0.001)
        batcher.start()
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.submit(["C"])
        assert await batcher.submit(["N"]) == ["N"]
        await batcher.stop()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def worker_client(transformer_registry):
    from fastapi.testclient import TestClient

    from molserve.config import WorkerSettings
    from molserve.worker.app import create_worker_app

    settings = WorkerSettings(registry=transformer_registry.root, token="worker-secret",
                              backend="onnx", max_wait_ms=2)
    with TestClient(create_worker_app(settings)) as client:
        yield client


AUTH = {"authorization": "Bearer worker-secret"}


def test_worker_predicts_with_provenance(worker_client):
    response = worker_client.post("/v1/predict", headers={**AUTH, "x-request-id": "abc123"},
                                  json={"molecules": ["CCO", "c1ccccc1O"],
                                        "endpoints": ["logbb", "hydration_free_energy"]})
    assert response.status_code == 200
    body = response.json()
    assert response.headers["x-request-id"] == "abc123"
    assert set(body["results"]) == {"logbb", "hydration_free_energy"}
    answer = body["results"]["logbb"][0]
    assert answer["provenance"]["tier"] == "transformer"
    assert answer["provenance"]["kind"].startswith("roberta (onnx")
    assert answer["units"] == "log10(C_brain/C_blood)"


def test_worker_needs_its_token(worker_client):
    body = {"molecules": ["CCO"], "endpoints": ["logbb"]}
    assert worker_client.post("/v1/predict", json=body).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert worker_client.post("/v1/predict", json=body, headers=wrong).status_code == 401
    assert worker_client.get("/healthz").status_code == 200  # liveness stays open
    # Every other route needs it too, /metrics included.
    assert worker_client.get("/metrics").status_code == 401
    assert worker_client.get("/v1/models").status_code == 401


def test_worker_checks_the_token_before_reading_the_body(worker_client):
    # A body that is not even JSON: without the token it is refused as unauthorized (401), not
    # parsed into a validation error (422) that would tell an anonymous caller about the API.
    response = worker_client.post("/v1/predict", content=b"{not json",
                                  headers={"content-type": "application/json"})
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    response = worker_client.post("/v1/predict", content=b"{not json",
                                  headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422


def test_worker_refuses_a_body_above_its_limit(worker_client):
    huge = {"molecules": ["C" * 100] * 100_000, "endpoints": ["logbb"]}  # about 10 MB
    response = worker_client.post("/v1/predict", json=huge, headers=AUTH)
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"


def test_worker_refuses_endpoints_it_does_not_serve(worker_client):
    response = worker_client.post("/v1/predict", headers=AUTH,
                                  json={"molecules": ["CCO"], "endpoints": ["solubility"]})
    assert response.status_code == 404 and response.json()["error"] == "no_transformer_model"


def test_worker_readiness_models_and_metrics(worker_client):
    ready = worker_client.get("/readyz", headers=AUTH).json()
    assert ready["ready"] and ready["models"] == ["hydration_free_energy", "logbb"]
    models = worker_client.get("/v1/models", headers=AUTH).json()
    assert {m["endpoint"] for m in models} == {"logbb", "hydration_free_energy"}
    assert "molserve_worker_requests_total" in worker_client.get("/metrics", headers=AUTH).text
