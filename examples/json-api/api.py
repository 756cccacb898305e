"""A small JSON API written only against Nuclio's Python API.

POST a JSON object with a list of numbers and get statistics back:

    curl -s localhost:8081/stats -H 'Content-Type: application/json' -d '{"values": [1, 2, 3]}'
"""

import os
import statistics


def init_context(context):
    # Runs once per worker, before its first event: the place for clients, models, caches.
    context.user_data.greeting = os.environ.get("GREETING", "Hello")
    context.user_data.max_items = int(os.environ.get("MAX_ITEMS", "100"))
    context.user_data.served = 0
    context.logger.info_with("json-api ready", max_items=context.user_data.max_items)


def handler(context, event):
    context.user_data.served += 1
    if event.method == "GET":
        return {
            "message": "{0} from worker {1}".format(context.user_data.greeting, context.worker_id),
            "served_by_this_worker": context.user_data.served,
            "usage": 'POST a JSON object {"values": [numbers]}',
        }

    # With Content-Type: application/json the body arrives already decoded (a dict or list).
    body = event.body
    if not isinstance(body, dict) or not isinstance(body.get("values"), list):
        return context.Response(
            body={"error": "expected a JSON object with a list field 'values'"},
            content_type="application/json",
            status_code=400,
        )
    values = body["values"]
    if len(values) > context.user_data.max_items:
        return 413, {"error": "at most {0} values".format(context.user_data.max_items)}
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return 400, {"error": "every value must be a number"}
    if not numbers:
        return 400, {"error": "'values' is empty"}
    context.logger.debug_with("computed stats", count=len(numbers))
    return {
        "count": len(numbers),
        "mean": statistics.fmean(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "stdev": statistics.pstdev(numbers),
    }
