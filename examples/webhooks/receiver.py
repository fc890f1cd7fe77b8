#!/usr/bin/env python3
"""A webhook receiver for orch: checks each POST's signature and prints it.

    ORCH_WEBHOOK_SECRET=s3cret python3 examples/webhooks/receiver.py 8765

with, in orch's global config (~/.config/orch/config.toml):

    [[webhooks]]
    url = "http://127.0.0.1:8765/orch"
    events = ["task.finished", "task.stuck", "cleanup.done"]
    secret = "s3cret"

orch signs the exact body it sends: X-Orch-Signature is "sha256=" and the
hex HMAC-SHA256 of the body with the secret. Compare in constant time, and
answer 2xx once handled: anything else (or no answer within 10 s) is retried
with backoff, then given up and counted in orch_webhook_failures_total.
"""

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ.get("ORCH_WEBHOOK_SECRET", "").encode()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        given = self.headers.get("X-Orch-Signature", "")
        if SECRET and not hmac.compare_digest(expected, given):
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        kind = self.headers.get("X-Orch-Event")
        if kind == "task.finished":
            task = event["task"]
            print(f"{task['id']} {task['project']}: {task['state']} ({task.get('reason')})")
        elif kind == "task.stuck":
            print(f"{event['id']} {event['project']}: stuck, silent for {event['silent_secs']}s")
        elif kind == "cleanup.done":
            print(f"cleanup ({event['trigger']}): {event['report']['summary']}")
        sys.stdout.flush()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    HTTPServer(("127.0.0.1", port), Hook).serve_forever()
