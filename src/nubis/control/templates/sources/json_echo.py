"""JSON echo: returns the request's method, path, query fields and decoded JSON body."""


def handler(context, event):
    return {
        "method": event.method,
        "path": event.path,
        "fields": event.fields,
        "body": event.body if isinstance(event.body, (dict, list)) else event.body.decode("utf-8", "replace"),
    }
