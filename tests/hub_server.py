"""A small in-process server speaking the part of the Hub's HTTP API that publishing and reading use: whoami,
create a repo, list refs and files (tree, paths-info), repo info, pre-upload, commit, tag, card metadata
validation, and resolve files, with HTTP Range requests answered as the Hub's CDN does (206 + Content-Range).

As strict as the Hub where a client's behaviour depends on it:
- an unknown repo is `RepoNotFound`, an unknown revision of a known repo `RevisionNotFound` (404 with the Hub's
  `X-Error-Code`), so a client cannot mistake one for the other and fall back to a cached copy;
- large or binary files (the Hub's default `.gitattributes` patterns, >= 10 MiB, or a non-text sample) must take
  the LFS path: pre-upload answers `lfs`, the content goes through the LFS batch API and a PUT, and the commit
  names it by sha256 (`lfsFile`); a base64 `file` operation for such a path is refused;
- `validate-yaml` checks a card's metadata with rules that can be checked offline (see `yaml_errors`).

State lives in memory; `requests`, `range_requests` and `lfs_uploads` record what clients asked."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
# the Hub's default .gitattributes (models and datasets): these go through LFS whatever their size
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx "
    "*.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip "
    "*.zst *tfevents* *.png *.jpg *.jpeg *.webp *.gif *.mp3 *.wav *.flac *.mp4"
).split()
LFS_MIN_SIZE = 10 * 1024 * 1024


def takes_lfs(path: str, size: int, sample: bytes) -> bool:
    """The Hub's rule for a file's upload mode: a default LFS pattern, a size of 10 MiB or more, or binary."""
    if size >= LFS_MIN_SIZE or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS):
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in sample


class NotFound(Exception):
    """A 404 the Hub marks with `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (type, id) -> {"commits": {oid: files}, "branches", "tags"}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, as uploaded through the LFS API
        self.requests: list[str] = []
        self.range_requests: list[tuple[str, str, int]] = []  # (path, Range header, status)
        self.lfs_uploads: list[str] = []  # sha256 of every object PUT through LFS
        self.lock = threading.Lock()

    def repo(self, kind: str, repo_id: str) -> dict:
        key = (kind.rstrip("s"), repo_id)
        if key not in self.repos:
            raise NotFound("RepoNotFound", f"Repository not found: {repo_id}")
        return self.repos[key]

    def files(self, kind: str, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        repo = self.repo(kind, repo_id)
        oid = repo["tags"].get(revision) or repo["branches"].get(revision) or revision
        if oid not in repo["commits"]:
            raise NotFound("RevisionNotFound", f"Invalid rev id: {revision}")
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
    found = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    if takes_lfs(path, len(data), data[:512]):
        found["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return found


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
            if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def route(self, method: str):
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append(f"{method} {path}")
            with hub.lock:
                try:
                    return self.dispatch(method, path, parse_qs(url.query))
                except NotFound as missing:
                    return self.reply(
                        404,
                        {"error": missing.message},
                        {
                            "Content-Type": "application/json",
                            "X-Error-Code": missing.code,
                            "X-Error-Message": missing.message,
                        },
                    )
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
                payload = json.loads(self.body())
                errors = yaml_errors(payload["content"], payload.get("repoType") or "model")
                return self.reply(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
            if method == "POST" and (
                match := re.fullmatch(
                    r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", path
                )
            ):
                hub.repo(match["type"] or "models", match["repo"])
                host = f"http://{self.headers['Host']}"
                objects = []
                for item in json.loads(self.body())["objects"]:
                    answer = {"oid": item["oid"], "size": item["size"]}
                    if item["oid"] not in hub.lfs_objects:
                        answer["actions"] = {"upload": {"href": f"{host}/lfs-upload/{item['oid']}", "header": {}}}
                    objects.append(answer)
                return self.reply(
                    200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
                )
            if method == "PUT" and (match := re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", path)):
                data = self.body()
                if hashlib.sha256(data).hexdigest() != match["oid"]:
                    return self.reply(400, {"error": "content does not match its sha256"})
                hub.lfs_objects[match["oid"]] = data
                hub.lfs_uploads.append(match["oid"])
                return self.reply(200, {})
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
                modes = [
                    "lfs" if takes_lfs(f["path"], f["size"], base64.b64decode(f["sample"])) else "regular"
                    for f in files
                ]
                return self.reply(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
                            for f, mode in zip(files, modes, strict=True)
                        ]
                    },
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
                        data = base64.b64decode(item["value"]["content"])
                        if takes_lfs(item["value"]["path"], len(data), data[:512]):
                            return self.reply(400, {"error": f"{item['value']['path']} must be uploaded with LFS"})
                        files[item["value"]["path"]] = data
                    elif item["key"] == "lfsFile":
                        if item["value"]["oid"] not in hub.lfs_objects:
                            return self.reply(400, {"error": f"LFS object of {item['value']['path']} not uploaded"})
                        files[item["value"]["path"]] = hub.lfs_objects[item["value"]["oid"]]
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
            if "lfs" in entry(name, data):  # the Hub names an LFS file by its sha256
                headers |= {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))}
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

        def do_PUT(self):
            self.route("PUT")

    return Handler


def yaml_errors(content: str, repo_type: str) -> list[str]:
    """What the Hub's metadata check would refuse in a card, by rules available offline: YAML without duplicate
    keys; huggingface_hub's card data classes (model-index, eval results); a license id, and `license_name` +
    `license_link`... for `other`; base models as repo ids; for datasets, `size_categories`, `multilinguality`,
    creators and `task_categories` from the lists the `datasets` and `transformers` packages carry, and
    `configs` / `dataset_info` as `datasets` parses them."""
    import importlib.resources

    import yaml
    from datasets.utils.metadata import MetadataConfigs, _NoDuplicateSafeLoader, known_task_ids
    from huggingface_hub import DatasetCardData, ModelCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not content.startswith("---\n"):
        return []  # no metadata: the Hub warns, accepts
    try:
        data = yaml.load(content.split("---\n", 2)[1], Loader=_NoDuplicateSafeLoader) or {}
    except (yaml.YAMLError, IndexError, TypeError) as error:
        return [f"invalid YAML: {error}"]
    if not isinstance(data, dict):
        return ["metadata must be a mapping"]
    errors = []
    try:
        (DatasetCardData if repo_type == "dataset" else ModelCardData)(**data)
    except Exception as error:  # noqa: BLE001 - any refusal of the card data class is a metadata error
        errors.append(f"card data: {error}")
    if data.get("license") == "other" and not data.get("license_name"):
        errors.append('"license_name" is required when "license" is "other"')
    if "license_name" in data and not re.fullmatch(r"[a-z0-9-.]+", str(data["license_name"])):
        errors.append('"license_name" must be lowercase letters, digits, "-" and "."')
    base_models = data.get("base_model") or []
    for base in [base_models] if isinstance(base_models, str) else base_models:
        try:
            validate_repo_id(base)
        except HFValidationError:
            errors.append(f'"base_model" {base!r} is not a repo id')
    if repo_type == "dataset":
        resources = importlib.resources.files("datasets.utils.resources")
        sizes = json.loads((resources / "size_categories.json").read_text())
        multilinguality = json.loads((resources / "multilingualities.json").read_text())
        creators = json.loads((resources / "creators.json").read_text())
        from transformers.pipelines import SUPPORTED_TASKS

        tasks = set(known_task_ids) | set(SUPPORTED_TASKS)
        checks = [
            ("size_categories", sizes),
            ("multilinguality", multilinguality),
            ("task_categories", tasks),
            ("annotations_creators", creators["annotations"]),
            ("language_creators", creators["language"]),
        ]
        for key, allowed in checks:
            values = data.get(key) or []
            for value in [values] if isinstance(values, str) else values:
                if value not in allowed:
                    errors.append(f'"{key}": {value!r} is not one of the known values')
        try:
            configs = MetadataConfigs.from_dataset_card_data(DatasetCardData(**data))
            configs.get_default_config_name()
            if "dataset_info" in data:
                from datasets.info import DatasetInfosDict

                DatasetInfosDict.from_dataset_card_data(DatasetCardData(**data))
        except Exception as error:  # noqa: BLE001
            errors.append(f"configs / dataset_info: {error}")
    return errors


def serve() -> tuple[FakeHub, ThreadingHTTPServer, str]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server, f"http://127.0.0.1:{server.server_address[1]}"
