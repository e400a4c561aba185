"""`ldm serve`: an HTTP server holding one model, with A1111's API and a native job API over one queue.

fields (A1111's request fields, one table) -> requests (a checked GenerationRequest) -> jobs (the queue and its one
worker) -> generate (the model and what the worker runs) ; security (host, auth, content type, size), app (routes),
run (uvicorn, SIGTERM). Needs the `serve` extra (fastapi, uvicorn).
"""
