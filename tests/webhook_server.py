#!/usr/bin/env python3
"""An alert receiver for tests/webhook.rs: a real HTTP server process, standing for a case-management
system. Every POST is answered 200 and appended to --log as one JSON line (path, headers, body), then
flushed, so the test can read what arrived even after this process is killed.

    python3 tests/webhook_server.py --port 8080 --log received.ndjson
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    out = open(args.log, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode("utf-8")
            line = json.dumps(
                {
                    "path": self.path,
                    # Header names are case-insensitive: logged in lower case.
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            out.write(line + "\n")
            out.flush()
            reply = b'{"ok":true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_):
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
