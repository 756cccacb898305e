"""Reports the pid that imported the module: in spawn mode each worker imports it itself."""

import os

IMPORT_PID = os.getpid()


def init_context(context):
    context.user_data.init_pid = os.getpid()


def handler(context, event):
    if event.path == "/exit":
        os._exit(3)
    return {"pid": os.getpid(), "import_pid": IMPORT_PID, "init_pid": context.user_data.init_pid}
