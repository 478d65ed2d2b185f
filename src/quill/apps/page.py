"""The web page: ``/`` (chat and the blind A/B arena in one page) and its files under ``/web``."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).parent / "web"


def page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    return router


def mount_web(app: FastAPI) -> None:
    """The page's script and style sheet, mounted on the app itself: ``include_router`` of the FastAPI releases
    this project allows (>=0.110) drops a router's mounts (fastapi/fastapi#10180)."""
    app.mount("/web", StaticFiles(directory=WEB), name="web")
