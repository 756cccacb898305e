"""A single-file function whose configuration is an inline block, as nuctl reads it."""

import os

# @nuclio.configure
#
# function.yaml:
#   metadata:
#     name: inline-configured
#   spec:
#     env:
#     - name: INLINE_GREETING
#       value: hello from the inline block


def handler(context, event):
    return os.environ.get("INLINE_GREETING", "INLINE_GREETING is not set")
