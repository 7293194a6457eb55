"""A stand-in worker that misbehaves on request, for the gateway's resilience tests.

It speaks the worker API (GET /v1/models, POST /v1/predict) and switches behaviour through
POST /control {"mode": "ok" | "hang" | "slow" | "error500" | "garbage" | "overloaded"}, and
optionally "evidence" (the split its model lists as tested on).
Run: python -m tests.fake_worker --port P
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

app = FastAPI()
state = {"mode": "ok", "calls": 0, "probes": 0, "request_ids": []}
MODEL = {"endpoint": "logbb", "model_id": "logbb/transformer", "version": 99, "tier": "transformer",
         "task": "regression", "units": "log10(C_brain/C_blood)", "metrics": {"rmse": 0.01}}


@app.post("/control")
async def control(request: Request):
    body = await request.json()
    state["mode"] = body["mode"]
    if "evidence" in body:
        MODEL["evidence"] = body["evidence"]
    return {"mode": state["mode"]}


@app.get("/v1/models")
async def models():
    if state["mode"] == "hang":
        await asyncio.sleep(3600)
    return [MODEL]


@app.get("/calls")
async def calls():
    return {"calls": state["calls"], "probes": state["probes"], "request_ids": state["request_ids"][-20:]}


@app.post("/v1/predict")
async def predict(request: Request):
    if request.headers.get("x-molserve-probe"):  # the gateway's health probe, not a caller's call
        state["probes"] += 1
    else:
        state["calls"] += 1
    state["request_ids"].append(request.headers.get("x-request-id"))
    body = await request.json()
    mode = state["mode"]
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "slow":
        await asyncio.sleep(1.0)
    if mode == "error500":
        return JSONResponse({"error": "boom"}, status_code=500)
    if mode == "garbage":
        return PlainTextResponse("{not json", media_type="application/json")
    if mode == "overloaded":
        return JSONResponse({"error": "overloaded"}, status_code=503, headers={"Retry-After": "1"})
    answers = [{"value": 0.5, "units": MODEL["units"], "kind": "predicted",
                "uncertainty": {"interval": [0.0, 1.0], "method": "fake"},
                "provenance": {"model_id": "logbb/transformer", "version": 99, "tier": "transformer"}}
               for _ in body["molecules"]]
    return {"results": {"logbb": answers}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
