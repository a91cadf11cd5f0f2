"""`fine-tune-dag annotate`: a local page where a person picks the better of two answers, one comparison at a time.

Every click is saved to the warehouse at once (see `core.store.labels`), so closing the tab or stopping the
server loses nothing, and the next start resumes at the first unanswered comparison. The page never sees
where an answer came from, only which one it shows on the left.

The blind mode (`mode="blind"`, see `core.store.blind`) asks instead which of two texts on the same prompt the
author wrote, the author's held-out passage or the model's; it works the same way. The pairs mode (`mode="pairs"`,
see `core.store.pair_labels`) shows each synthetic Q&A pair, kept or rejected, beside its passage, to accept, edit
or reject. Each mode's page holds only its markup and settings; the script and styles all share are served beside
it (`annotate.js`, `annotate.css`).

It listens on 127.0.0.1 only and has no login, so it also refuses what another website open in the same
browser could send it: a choice must be `application/json` (a cross-site form cannot set that without a CORS
preflight, which is never granted), and a Host other than 127.0.0.1 or localhost (DNS rebinding) gets a 400.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fine_tune_dag.core.store.blind import blind_progress, next_blind_trial, record_blind_pick
from fine_tune_dag.core.store.labels import next_comparison, progress, record_choice
from fine_tune_dag.core.store.pair_labels import next_pair_to_review, record_pair_decision, review_progress
from fine_tune_dag.core.store.warehouse import Warehouse

HOST = "127.0.0.1"  # the page writes labels without asking who is calling: never reachable from other machines
ALLOWED_HOSTS = ("127.0.0.1", "localhost")
SHARED = {"annotate.js": "text/javascript", "annotate.css": "text/css"}  # served at /<name> for every page


def _packaged(name: str) -> str:
    """The text of a file shipped beside this module (a page, its script or its styles)."""
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


def _shared_route(name: str, media_type: str) -> Route:
    """`GET /<name>`: a file every page loads, read once, with its content type (text/* comes as UTF-8)."""
    body = _packaged(name)

    async def shared(request: Request) -> Response:
        return Response(body, media_type=media_type)

    return Route(f"/{name}", shared, methods=["GET"])


@dataclass(frozen=True)
class Mode:
    """What one kind of labelling shows and saves; all share the server, its checks and its JSON shapes."""

    page: str  # the page's file, beside this module
    item: str  # the state's key for what is shown (None when all is answered)
    item_id: str  # the field naming it in a choice
    next_item: Callable[[Warehouse, str], dict[str, Any] | None]
    record: Callable[..., str]  # (db, item id, labeler, side, *the `extra` fields of the choice)
    progress: Callable[[Warehouse, str], tuple[int, int]]
    keys: str  # the keys, as the command prints them
    what: str  # what is labelled, in the plural
    source: str  # what makes the items, named when there are none yet
    extra: tuple[str, ...] = ("shown_left",)  # what else a choice carries

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.item_id, "side", *self.extra)


def _modes(rng: random.Random) -> dict[str, Mode]:
    """Each mode by name (page, item, item_id, next_item, record, progress, extra). A comparison's left answer is
    drawn from `rng` as it is shown; a blind trial's order was drawn when it was saved, so the page shows that. A
    pair's decision (`side`: accept, edit or reject) carries the question and answer as the page holds them."""
    return {
        "preference": Mode(
            "annotate.html",
            "comparison",
            "candidate_id",
            partial(next_comparison, rng=rng),
            record_choice,
            progress,
            "left/right arrows: better answer, down: tie, s: skip",
            "comparisons",
            "preference_candidates",
        ),
        "blind": Mode(
            "annotate_blind.html",
            "trial",
            "trial_id",
            next_blind_trial,
            record_blind_pick,
            blind_progress,
            "left/right arrows: the author's text",
            "blind trials",
            "eval_report",
        ),
        "pairs": Mode(
            "annotate_pairs.html",
            "pair",
            "pair_id",
            next_pair_to_review,
            record_pair_decision,
            review_progress,
            "a: accept, e: edit (ctrl+enter saves), r: reject",
            "pairs",
            "qa_pairs",
            ("question", "answer"),
        ),
    }


def _bad_request(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


def annotation_app(
    db: Warehouse, labeler: str, rng: random.Random | None = None, mode: str = "preference"
) -> Starlette:
    """The page and its two JSON endpoints for one labeler; `mode` is `preference` (which answer is better, `rng`
    deciding which goes on the left), `blind` (which text did the author write, in the order stored with it) or
    `pairs` (accept, edit or reject each synthetic pair).

    Handlers are async and call DuckDB directly, so requests are handled one after another: a single
    person labels, and serial writes keep their choices in order."""
    if not labeler.strip():
        raise ValueError("annotating needs the name of who is labelling")
    modes = _modes(rng or random.Random())
    if mode not in modes:
        raise ValueError(f"mode must be one of {', '.join(modes)}, not {mode!r}")
    kind = modes[mode]
    page = _packaged(kind.page)
    fields = ", ".join(kind.fields)

    def state() -> dict[str, Any]:
        done, total = kind.progress(db, labeler)
        return {
            kind.item: kind.next_item(db, labeler),
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
            return _bad_request(f"the request body must be JSON: {{{fields}}}")
        if not isinstance(body, dict):
            return _bad_request(f"the request body must be a JSON object: {{{fields}}}")
        missing = [field for field in kind.fields if field not in body]
        if missing:
            return _bad_request(f"missing {', '.join(missing)}")
        if not all(isinstance(body[field], str) for field in kind.fields):
            return _bad_request(f"{fields} must be strings")
        try:
            kind.record(db, body[kind.item_id], labeler, body["side"], *(body[field] for field in kind.extra))
        except ValueError as error:
            return _bad_request(str(error))
        except KeyError as error:
            return _bad_request(error.args[0])
        return JSONResponse(state())

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            *(_shared_route(name, media_type) for name, media_type in SHARED.items()),
            Route("/api/next", next_pair, methods=["GET"]),
            Route("/api/choice", choice, methods=["POST"]),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(ALLOWED_HOSTS))],
    )


def introduction(db: Warehouse, labeler: str, port: int, mode: str) -> list[str]:
    """What the command prints before serving: where, which keys, and how far this person is (or why there is
    nothing to label yet)."""
    kind = _modes(random.Random())[mode]
    done, total = kind.progress(db, labeler)
    return [
        f"Annotating as {labeler}: http://{HOST}:{port}  ({kind.keys}; Ctrl-C to stop)",
        f"{done} of {total} {kind.what} answered" if total else f"no {kind.what} yet: {kind.source} must be "
        "materialized first",
    ]


def serve(db: Warehouse, labeler: str, port: int, mode: str = "preference") -> None:
    """Serve the page on 127.0.0.1 until interrupted; access logs stay off, the terminal shows only problems."""
    uvicorn.run(annotation_app(db, labeler, mode=mode), host=HOST, port=port, log_level="warning")
