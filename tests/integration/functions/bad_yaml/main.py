def handler(context, event):
    return "never served: the configuration is invalid"
