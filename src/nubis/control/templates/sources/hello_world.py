"""Hello world: answers every request with a greeting."""


def handler(context, event):
    context.logger.info("Invoked")
    return "Hello, from Nubis!"
