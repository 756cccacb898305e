"""Raises while being imported: `nubis run` must fail and show this traceback."""


def _load_model():
    raise RuntimeError("model file missing: import-time failure")


MODEL = _load_model()


def handler(context, event):
    return "never served"
