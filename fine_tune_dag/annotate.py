"""`fine-tune-dag annotate`: a local page where a person picks the better of two answers, one comparison at a time.

Every click is saved to the warehouse at once (see `core.preferences`), so closing the tab or stopping the
server loses nothing, and the next start resumes at the first unanswered comparison. The page never sees
where an answer came from, only which one it shows on the left.

It listens on 127.0.0.1 only and has no login, so it also refuses what another website open in the same
browser could send it: a choice must be `application/json` (a cross-site form cannot set that without a CORS
preflight, which is never granted), and a Host other than 127.0.0.1 or localhost (DNS rebinding) gets a 400.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fine_tune_dag.core.store.labels import next_comparison, progress, record_choice
from fine_tune_dag.core.store.warehouse import Warehouse

PAGE = Path(__file__).with_name("annotate.html")
HOST = "127.0.0.1"  # the page writes labels without asking who is calling: never reachable from other machines
ALLOWED_HOSTS = ("127.0.0.1", "localhost")
CHOICE_FIELDS = ("candidate_id", "side", "shown_left")


def _bad_request(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


def annotation_app(db: Warehouse, labeler: str, rng: random.Random | None = None) -> Starlette:
    """The page and its two JSON endpoints for one labeler; `rng` decides which answer goes on the left.

    Handlers are async and call DuckDB directly, so requests are handled one after another: a single
    person labels, and serial writes keep their choices in order."""
    if not labeler.strip():
        raise ValueError("annotating needs the name of who is labelling")
    rng = rng or random.Random()
    page = PAGE.read_text(encoding="utf-8")

    def state() -> dict[str, Any]:
        done, total = progress(db, labeler)
        return {
            "comparison": next_comparison(db, labeler, rng),
            "progress": {"done": done, "total": total},
            "labeler": labeler,
        }

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def next_pair(request: Request) -> Response:
        return JSONResponse(state())

    async def choice(request: Request) -> Response:
        if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            return _bad_request("send the choice as application/json")
        try:
            body = json.loads(await request.body())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            return _bad_request("the request body must be JSON: {candidate_id, side, shown_left}")
        if not isinstance(body, dict):
            return _bad_request("the request body must be a JSON object: {candidate_id, side, shown_left}")
        missing = [field for field in CHOICE_FIELDS if field not in body]
        if missing:
            return _bad_request(f"missing {', '.join(missing)}")
        if not all(isinstance(body[field], str) for field in CHOICE_FIELDS):
            return _bad_request(f"{', '.join(CHOICE_FIELDS)} must be strings")
        try:
            record_choice(db, body["candidate_id"], labeler, body["side"], body["shown_left"])
        except ValueError as error:
            return _bad_request(str(error))
        except KeyError as error:
            return _bad_request(error.args[0])
        return JSONResponse(state())

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/next", next_pair, methods=["GET"]),
            Route("/api/choice", choice, methods=["POST"]),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(ALLOWED_HOSTS))],
    )


def serve(db: Warehouse, labeler: str, port: int) -> None:
    """Serve the page on 127.0.0.1 until interrupted; access logs stay off, the terminal shows only problems."""
    uvicorn.run(annotation_app(db, labeler), host=HOST, port=port, log_level="warning")
