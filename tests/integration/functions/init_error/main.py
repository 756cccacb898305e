"""init_context raises: the function must not become ready."""


def init_context(context):
    raise ValueError("cannot connect to the database: init failure")


def handler(context, event):
    return "never served"
