"""A small in-process server speaking the part of the Hub's HTTP API that publishing uses: create a repo, list
refs and files, pre-upload, commit (regular files, base64), tag, and resolve files. State lives in memory."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (type, id) -> {"commits": {oid: files}, "branches", "tags"}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def repo(self, kind: str, repo_id: str) -> dict:
        return self.repos[(kind.rstrip("s"), repo_id)]

    def files(self, kind: str, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        repo = self.repo(kind, repo_id)
        oid = repo["tags"].get(revision) or repo["branches"].get(revision) or revision
        return oid, repo["commits"][oid]


def make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body=None, headers: dict | None = None, head_only: bool = False):
            data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            for key, value in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head_only:
                self.wfile.write(data)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def route(self, method: str):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{method} {path}")
            with hub.lock:
                try:
                    return self.dispatch(method, path)
                except KeyError:
                    return self.reply(
                        404,
                        {"error": "not found"},
                        {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"},
                    )

        def dispatch(self, method: str, path: str):
            if method == "POST" and path == "/api/repos/create":
                payload = json.loads(self.body())
                kind = payload.get("type") or "model"
                repo_id = (
                    f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                )
                url = f"http://{self.headers['Host']}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
                if (kind, repo_id) in hub.repos:
                    return self.reply(409, {"error": "You already created this repo", "url": url})
                empty = hashlib.sha1(repo_id.encode()).hexdigest()
                hub.repos[(kind, repo_id)] = {"commits": {empty: {}}, "branches": {"main": empty}, "tags": {}}
                return self.reply(200, {"url": url})
            if method == "POST" and path == "/api/validate-yaml":  # card metadata check before a README upload
                self.body()
                return self.reply(200, {"errors": [], "warnings": []})
            if match := re.fullmatch(rf"/api/{REPO}/refs", path):
                repo = hub.repo(match["type"], match["repo"])

                def refs(kind, items):
                    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o} for n, o in items.items()]

                return self.reply(
                    200,
                    {"branches": refs("heads", repo["branches"]), "tags": refs("tags", repo["tags"]), "converts": []},
                )
            if match := re.fullmatch(rf"/api/{REPO}/preupload/(?P<rev>[^/]+)", path):
                files = json.loads(self.body())["files"]
                return self.reply(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if match := re.fullmatch(rf"/api/{REPO}/(?:tree|paths-info)/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path):
                oid, files = hub.files(match["type"], match["repo"], match["rev"])
                entries = [
                    {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for p, d in sorted(files.items())
                ]
                return self.reply(200, entries)
            if match := re.fullmatch(rf"/api/{REPO}/commit/(?P<rev>[^/]+)", path):
                repo = hub.repo(match["type"], match["repo"])
                files = dict(repo["commits"][repo["branches"][match["rev"]]])
                for line in self.body().decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    elif item["key"] != "header":
                        return self.reply(400, {"error": f"unsupported operation {item['key']}"})
                oid = hashlib.sha1(json.dumps({p: hashlib.sha1(d).hexdigest() for p, d in sorted(files.items())}).encode()
                                   + repo["branches"][match["rev"]].encode()).hexdigest()  # fmt: skip
                repo["commits"][oid] = files
                repo["branches"][match["rev"]] = oid
                prefix = "" if match["type"] == "models" else match["type"] + "/"
                url = f"http://{self.headers['Host']}/{prefix}{match['repo']}/commit/{oid}"
                return self.reply(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})
            if match := re.fullmatch(rf"/api/{REPO}/tag/(?P<rev>[^/]+)", path):
                repo = hub.repo(match["type"], match["repo"])
                if method == "DELETE":
                    repo["tags"].pop(match["rev"])
                    return self.reply(200, {})
                tag = json.loads(self.body())["tag"]
                if tag in repo["tags"]:
                    return self.reply(409, {"error": f"tag {tag} exists"})
                repo["tags"][tag] = hub.files(match["type"], match["repo"], match["rev"])[0]
                return self.reply(200, {})
            if match := re.fullmatch(
                r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path
            ):
                oid, files = hub.files(match["type"] or "models", match["repo"], match["rev"])
                if match["file"] not in files:
                    return self.reply(
                        404,
                        {"error": "entry not found"},
                        {"Content-Type": "application/json", "X-Error-Code": "EntryNotFound"},
                    )
                data = files[match["file"]]
                headers = {
                    "X-Repo-Commit": oid,
                    "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                }
                return self.reply(200, data, headers, head_only=method == "HEAD")
            return self.reply(404, {"error": f"no route for {method} {path}"})

        def do_GET(self):
            self.route("GET")

        def do_HEAD(self):
            self.route("HEAD")

        def do_POST(self):
            self.route("POST")

        def do_DELETE(self):
            self.route("DELETE")

    return Handler


def serve() -> tuple[FakeHub, ThreadingHTTPServer, str]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server, f"http://127.0.0.1:{server.server_address[1]}"
