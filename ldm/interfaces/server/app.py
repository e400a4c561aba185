"""The HTTP routes: A1111's API (/sdapi/v1/...) and the native job API (/ldm/v1/jobs/...), over one JobQueue.

Every answer is JSON; a refusal says what was wrong ({"error", "detail", and "field" where one field was}), and an
internal error says only that (its traceback goes to the server log).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from ldm.interfaces.server.fields import FieldError
from ldm.interfaces.server.generate import Generator
from ldm.interfaces.server.jobs import FINISHED, RUNNING, WAITING, Job, JobQueue, QueueFull, ShuttingDown
from ldm.interfaces.server.requests import ServerLimits, decode_image, parse_request
from ldm.io.a1111_samplers import A1111_SAMPLERS, SCHEDULE_SETTINGS
from ldm.io.infotext import parse_infotext
from ldm.sampling.samplers import SAMPLERS

log = logging.getLogger("ldm.serve")
RETRY_AFTER_SECONDS = 5
POLL_SECONDS = 0.02


class Refused(Exception):
    """An answer other than 200, raised anywhere in a route."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.headers = status, error, detail, field, headers


def refusal(
    status: int, error: str, detail: str, field: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": error, "detail": detail, **({"field": field} if field else {})}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, read up to `limit` bytes (a chunked body has no Content-Length for the guard to check)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "body too large", f"a request body is at most {limit:,} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = getattr(exc, "msg", None) or str(exc)[:120]
        raise Refused(422, "invalid JSON", f"the body is not valid JSON ({reason})", field="body") from None


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def create_app(generator: Generator, queue: JobQueue, limits: ServerLimits) -> FastAPI:
    app = FastAPI(title="ldm serve", docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return refusal(exc.status, exc.error, exc.detail, exc.field, exc.headers)

    @app.exception_handler(FieldError)
    async def field_error(request: Request, exc: FieldError) -> JSONResponse:
        return refusal(422, "invalid field", str(exc), exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return refusal(exc.status_code, "http error", str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return refusal(500, "internal error", "the server failed; its log has the details")

    def submit(run, kind: str = "generate") -> Job:
        try:
            return queue.submit(Job(run=run, kind=kind))
        except QueueFull:
            raise Refused(503, "queue full", f"{queue.max_waiting} jobs are waiting; try again later",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None  # fmt: skip
        except ShuttingDown:
            raise Refused(503, "shutting down", "the server is stopping and takes no new jobs") from None

    async def finished(job: Job, request: Request) -> Job:
        """Wait for the job; a client that disconnects while its job waits has the job dropped (it never runs)."""
        while not job.done.is_set():
            if job.status == WAITING and await request.is_disconnected():
                queue.cancel(job, "dropped (its client disconnected)")
                log.info("dropped job %s: its client disconnected", job.id)
            await asyncio.sleep(POLL_SECONDS)
        return job

    def outcome(job: Job) -> dict[str, Any]:
        if job.error is not None:
            status, detail = job.error
            field = detail.split(":")[0] if status == 422 and ":" in detail else None
            raise Refused(status, {409: "cancelled", 503: "unavailable", 500: "internal error"}.get(status, "refused"),
                          detail, field if field and " " not in field else None)  # fmt: skip
        return job.result

    async def generation(route: str, request: Request) -> Job:
        body = await read_json(request, limits.max_body_bytes)
        parsed = parse_request(route, body, limits, generator.controlnets)
        if parsed.checkpoint is not None:
            generator.find(parsed.checkpoint, "override_settings.sd_model_checkpoint")  # refused before queueing
        return submit(lambda job: generator.generate(parsed, job))

    # A1111's API ---------------------------------------------------------------------------------------------------
    async def answered(route: str, request: Request) -> Any:
        job = await finished(await generation(route, request), request)
        queue.forget(job)  # answered here: the job API never hands it out, so its images are not kept
        return outcome(job)

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> Any:
        return await answered("txt2img", request)

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request) -> Any:
        return await answered("img2img", request)

    @app.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        held = generator.entry
        return [
            {"title": e.title, "model_name": e.name, "hash": generator.model_hash() if e == held else None,
             "sha256": generator.model_sha256() if e == held else None,
             "filename": e.checkpoint, "config": e.config}
            for e in generator.entries
        ]  # fmt: skip

    @app.get("/controlnet/model_list")
    async def controlnet_models() -> dict[str, Any]:  # A1111's ControlNet extension's route
        return {"model_list": [Path(path).stem for path in generator.controlnets]}

    @app.get("/controlnet/module_list")
    async def controlnet_modules() -> dict[str, Any]:
        return {"module_list": ["none"]}  # control images come preprocessed

    @app.get("/sdapi/v1/samplers")
    async def samplers() -> list[dict[str, Any]]:
        return [
            {"name": label, "aliases": [ours], "options": {} if schedule is None else {"scheduler": schedule.lower()}}
            for label, (ours, schedule) in A1111_SAMPLERS.items()
            if ours in SAMPLERS
        ]

    @app.get("/sdapi/v1/schedulers")
    async def schedulers() -> list[dict[str, Any]]:
        return [{"name": name.lower(), "label": name, "aliases": None, "default_rho": 7.0 if name == "Karras" else -1,
                 "need_inner_model": False} for name in ("Automatic", *SCHEDULE_SETTINGS)]  # fmt: skip

    def options() -> dict[str, Any]:
        encoder = getattr(generator.model, "text_encoder", None)
        return {
            "sd_model_checkpoint": generator.entry.title,
            "sd_checkpoint_hash": generator.model_sha256(),
            "CLIP_stop_at_last_layers": getattr(encoder, "clip_skip", 1),
            "samples_format": "png",
        }

    @app.get("/sdapi/v1/options")
    async def get_options() -> dict[str, Any]:
        return options()

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request) -> Any:
        body = await read_json(request, limits.max_body_bytes)
        if not isinstance(body, dict):
            raise FieldError("body", "must be a JSON object of options")
        current = options()
        for key, value in body.items():
            if key == "sd_model_checkpoint":
                if not isinstance(value, str):
                    raise FieldError(key, "must be a model's title or name")
                continue
            if key not in current:
                raise FieldError(key, f"is not an option of this server; known: {', '.join(current)}")
            if value != current[key]:
                raise FieldError(key, f"cannot be changed here (it is {current[key]!r})")
        if "sd_model_checkpoint" in body:
            entry = generator.find(body["sd_model_checkpoint"], "sd_model_checkpoint")
            outcome(await finished(submit(lambda job: generator.switch(entry), kind="switch"), request))
        return None

    @app.get("/sdapi/v1/progress")
    async def progress() -> dict[str, Any]:
        job = queue.running
        fraction = job.progress() if job is not None else 0.0
        elapsed = time.time() - job.started if job is not None and job.started else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        waiting = queue.waiting()
        state = {
            "skipped": False, "interrupted": job is not None and job.stop_reason is not None,
            "stopping_generation": False, "job": job.id if job else "", "job_count": waiting + (job is not None),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started if job else started)),
            "job_no": job.number if job else 0, "sampling_step": job.step if job else 0,
            "sampling_steps": job.steps if job else 0, "queue_size": waiting,
        }  # fmt: skip
        return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": None, "textinfo": None}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict[str, Any]:
        job = queue.running
        if job is not None and job.kind == "generate":
            queue.cancel(job, "interrupted")
        return {}

    @app.post("/sdapi/v1/png-info")
    async def png_info(request: Request) -> dict[str, Any]:
        body = await read_json(request, limits.max_body_bytes)
        if not isinstance(body, dict) or set(body) - {"image"}:
            raise FieldError("body", 'must be {"image": a base64 PNG}')
        decode_image(body.get("image"), "image", limits)  # the size and format checks
        data = body["image"].partition(",")[2] if body["image"].startswith("data:") else body["image"]
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            chunks = {k: v for k, v in getattr(img, "text", {}).items() if isinstance(v, str)}
        text = chunks.pop("parameters", "")
        return {"info": text, "items": chunks, "parameters": parse_infotext(text) if text else {}}

    # The native job API --------------------------------------------------------------------------------------------
    def job_status(job: Job) -> dict[str, Any]:
        return {
            "id": job.id, "status": job.status, "position": queue.position(job), "progress": job.progress(),
            "step": job.step, "steps": job.steps, "submitted": job.submitted, "started": job.started,
            "finished": job.finished, **({"error": job.error[1]} if job.error else {}),
        }  # fmt: skip

    def known_job(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None or job.kind != "generate":
            raise Refused(404, "no such job", f"no job {job_id[:40]!r} (finished jobs are kept for a while only)")
        return job

    @app.post("/ldm/v1/jobs/{route}", status_code=202)
    async def submit_job(route: str, request: Request) -> dict[str, Any]:
        if route not in ("txt2img", "img2img"):
            raise Refused(404, "no such route", "submit to /ldm/v1/jobs/txt2img or /ldm/v1/jobs/img2img")
        return job_status(await generation(route, request))

    @app.get("/ldm/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return job_status(known_job(job_id))

    @app.get("/ldm/v1/jobs/{job_id}/result")
    async def job_result(job_id: str) -> Any:
        job = known_job(job_id)
        if job.status not in FINISHED:
            raise Refused(409, "not finished", f"the job is {job.status}; poll /ldm/v1/jobs/{job.id}")
        return outcome(job)

    @app.delete("/ldm/v1/jobs/{job_id}")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = known_job(job_id)
        was = job.status
        queue.cancel(job)
        return {**job_status(job), "cancelled": was in (WAITING, RUNNING)}

    @app.get("/ldm/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": generator.entry.title, "waiting": queue.waiting(),
                "running": queue.running is not None and queue.running.status == RUNNING}  # fmt: skip

    return app
