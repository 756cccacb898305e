"""Async handler and async init_context (awaited by the runtime), plus an async generator body."""

import asyncio
import os


async def init_context(context):
    await asyncio.sleep(0.01)
    context.user_data.init = "async-init-ran"


async def _chunks():
    for part in ("alpha\n", "beta\n", "gamma\n"):
        await asyncio.sleep(0.02)
        yield part


async def handler(context, event):
    if event.path == "/agen":
        return _chunks()
    await asyncio.sleep(0.01)
    return {"async": True, "init": context.user_data.init, "pid": os.getpid()}
