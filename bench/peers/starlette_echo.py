"""Peer: a bare Starlette echo app (parse the JSON body, answer it). Run with uvicorn."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(await request.json())


app = Starlette(routes=[Route("/echo/", echo, methods=["POST"])])
