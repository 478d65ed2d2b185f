"""The arena's HTTP routes (``/arena/info``, ``/arena/battle``, ``/arena/vote``, ``/arena/results``): make a
blind battle, take a vote, show the results (and how many usable preference pairs the votes make).

Why the server shuffles A/B and hides the names until the vote: a person who knows which poem came from
the fine-tuned poet votes for the story, not the poem. The shuffle uses ``secrets`` so the order cannot be
predicted, and the names are only in the vote's answer. Both poems use the same prompt and the same
sampling settings (stored with the battle) so the comparison is about the models.
"""
from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import APIRouter

from quill.apps import openai_schema as oa
from quill.apps.api_errors import ApiError
from quill.data.arena import ArenaError, ArenaStore, pair_counts, results
from quill.apps.service import Service

NEEDS_TWO = ("the arena needs two models: start the server with two runs, e.g. `quill serve base=smollm2-135m "
             "poet=runs/demo` (the same run twice under two names also works: `a=RUN b=RUN`)")


def arena_router(service: Service) -> APIRouter:
    router = APIRouter()
    workers, worker_for, submit = service.workers, service.worker_for, service.submit

    def store() -> ArenaStore:
        if service.arena is None:
            raise ApiError(503, "this server keeps no arena database (--arena-db)", type_="server_error")
        return service.arena

    @router.get("/arena/info")
    async def info():
        return {"models": list(workers), "ready": len(workers) >= 2, "message": None if len(workers) >= 2
                else NEEDS_TWO}

    @router.post("/arena/battle")
    async def battle(req: oa.ArenaBattleRequest):
        db = store()
        names = list(workers)
        if len(names) < 2:
            raise ApiError(400, NEEDS_TWO, code="needs_two_models")
        a, b = req.model_a, req.model_b
        if a is None and b is None:
            a, b = secrets.SystemRandom().sample(names, 2)
        elif a is None or b is None:
            chosen = a or b
            worker_for(chosen)
            other = secrets.choice([n for n in names if n != chosen])
            a, b = chosen, other
        if a == b:
            raise ApiError(400, "model_a and model_b must differ", param="model_b")
        wa, wb = worker_for(a), worker_for(b)
        messages = [{"role": "user", "content": req.prompt}]
        overrides: dict[str, Any] = {"temperature": req.temperature, "top_p": req.top_p,
                                     "max_new_tokens": req.max_tokens, "seed": None}
        try:
            ids_a, ids_b = wa.engine.chat_prompt(messages), wb.engine.chat_prompt(messages)
        except ValueError as err:
            raise ApiError(400, str(err), param="prompt") from None
        job_a = submit(wa, ids_a, overrides)
        try:
            job_b = submit(wb, ids_b, {**job_a.params.to_dict(), "seed": None})  # same settings for both
        except BaseException:
            job_a.cancel.set()
            raise
        text_a, text_b = await asyncio.gather(job_a.text(), job_b.text())
        if secrets.randbits(1):  # blind order: who is A is decided here and only revealed after the vote
            (a, text_a), (b, text_b) = (b, text_b), (a, text_a)
        sampling = {k: v for k, v in job_a.params.to_dict().items() if k != "seed"}
        battle_id = await asyncio.to_thread(db.add_battle, req.prompt, text_a, text_b, a, b, sampling)
        return {"id": battle_id, "prompt": req.prompt, "output_a": text_a, "output_b": text_b}

    @router.post("/arena/vote")
    async def vote(req: oa.ArenaVoteRequest):
        db = store()
        try:
            row = await asyncio.to_thread(db.vote, req.id, req.vote)
        except ArenaError as err:
            raise ApiError(err.status, str(err), param="id",
                           code={404: "battle_not_found", 409: "already_voted"}.get(err.status)) from None
        return {"id": row["id"], "vote": row["vote"], "model_a": row["model_a"], "model_b": row["model_b"]}

    @router.get("/arena/results")
    async def arena_results():
        db = store()
        return {"rows": await asyncio.to_thread(results, db), "pairs": await asyncio.to_thread(pair_counts, db)}

    return router
