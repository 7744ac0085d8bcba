"""A small in-process server speaking the part of the Hub's HTTP API that publishing and reading use: whoami,
create a repo, list refs and files (tree, paths-info), repo info, pre-upload, commit (regular files, base64), tag,
and resolve files, with HTTP Range requests answered as the Hub's CDN does (206 + Content-Range). State lives in
memory; `requests` and `range_requests` record what clients asked."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (type, id) -> {"commits": {oid: files}, "branches", "tags"}
        self.requests: list[str] = []
        self.range_requests: list[tuple[str, str, int]] = []  # (path, Range header, status)
        self.lock = threading.Lock()

    def repo(self, kind: str, repo_id: str) -> dict:
        return self.repos[(kind.rstrip("s"), repo_id)]

    def files(self, kind: str, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        repo = self.repo(kind, repo_id)
        oid = repo["tags"].get(revision) or repo["branches"].get(revision) or revision
        return oid, repo["commits"][oid]


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """`Range: bytes=a-b` / `a-` / `-n` as (first, last) inclusive; None without a header; False if unsatisfiable."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match[1] == match[2] == "":
        return False
    if match[1] == "":  # the last n bytes
        first, last = max(0, size - int(match[2])), size - 1
    else:
        first, last = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
    return (first, last) if first <= last and first < size else False


def entry(path: str, data: bytes | None) -> dict:
    if data is None:
        return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}
    return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}


def listing(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """The tree under `folder`: its files and sub-folders (all levels if `recursive`), as the Hub lists them."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    out, folders = [], set()
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            if recursive or depth == 1:
                folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            out.append(entry(path, data))
    return [entry(f, None) for f in sorted(folders)] + out


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
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append(f"{method} {path}")
            with hub.lock:
                try:
                    return self.dispatch(method, path, parse_qs(url.query))
                except KeyError:
                    return self.reply(
                        404,
                        {"error": "not found"},
                        {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"},
                    )

        def dispatch(self, method: str, path: str, query: dict):
            if path == "/api/whoami-v2":
                if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                return self.reply(
                    200,
                    {
                        "type": "user",
                        "name": "test",
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                    },
                )
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
            if match := re.fullmatch(rf"/api/{REPO}(?:/revision/(?P<rev>[^/]+))?", path):
                oid, files = hub.files(match["type"], match["repo"], match["rev"] or "main")
                return self.reply(
                    200,
                    {
                        "id": match["repo"],
                        "sha": oid,
                        "private": False,
                        "disabled": False,
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    },
                )
            if match := re.fullmatch(rf"/api/{REPO}/preupload/(?P<rev>[^/]+)", path):
                files = json.loads(self.body())["files"]
                return self.reply(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if match := re.fullmatch(rf"/api/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path):
                _, files = hub.files(match["type"], match["repo"], match["rev"])
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self.reply(200, listing(files, match["sub"] or "", recursive))
            if method == "POST" and (match := re.fullmatch(rf"/api/{REPO}/paths-info/(?P<rev>[^/]+)", path)):
                _, files = hub.files(match["type"], match["repo"], match["rev"])
                asked = parse_qs(self.body().decode()).get("paths", [])
                folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
                found = [
                    entry(p, files[p]) if p in files else entry(p, None) for p in asked if p in files or p in folders
                ]
                return self.reply(200, found)
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
                oid = hashlib.sha1(
                    json.dumps({p: hashlib.sha1(d).hexdigest() for p, d in sorted(files.items())}).encode()
                    + repo["branches"][match["rev"]].encode()
                ).hexdigest()
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
                return self.resolve(
                    method, path, *hub.files(match["type"] or "models", match["repo"], match["rev"]), match["file"]
                )
            return self.reply(404, {"error": f"no route for {method} {path}"})

        def resolve(self, method: str, path: str, oid: str, files: dict[str, bytes], name: str):
            if name not in files:
                return self.reply(
                    404,
                    {"error": "entry not found"},
                    {"Content-Type": "application/json", "X-Error-Code": "EntryNotFound"},
                )
            data = files[name]
            headers = {
                "X-Repo-Commit": oid,
                "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
            }
            wanted = byte_range(self.headers.get("Range"), len(data))
            if wanted is None:
                return self.reply(200, data, headers, head_only=method == "HEAD")
            if wanted is False:
                hub.range_requests.append((path, self.headers["Range"], 416))
                return self.reply(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            first, last = wanted
            hub.range_requests.append((path, self.headers["Range"], 206))
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return self.reply(206, data[first : last + 1], headers, head_only=method == "HEAD")

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
