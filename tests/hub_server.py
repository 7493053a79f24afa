"""A small Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, with everything held in memory.

It speaks the subset of the Hub HTTP API that ``huggingface_hub`` (2.x, without ``hf_xet``: set
``HF_HUB_DISABLE_XET=1``) and ``transformers`` use to create, push to and load from a model repository:

- ``POST /api/repos/create``: ``{"name", "organization", "visibility"}``; a new repo starts with one commit holding a
  ``.gitattributes`` that marks binary weights as LFS, as on the Hub.
- ``POST /api/models/{repo}/branch/{branch}``: a branch from ``startingPoint`` (default ``main``).
- ``POST /api/models/{repo}/preupload/{rev}``: ``"lfs"`` for paths matching an LFS pattern of ``.gitattributes``
  (or larger than 10 MB), else ``"regular"``, plus the current ``oid`` so unchanged files are skipped.
- ``POST /{repo}.git/info/lfs/objects/batch``, then ``PUT /lfs/{oid}``: the basic LFS transfer; the server checks
  the sha256 and size of what it receives.
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit (``header``, base64 ``file``, ``lfsFile``,
  ``deletedFile``); an ``lfsFile`` must have been uploaded first.
- ``GET /api/models/{repo}[/revision/{rev}]``: repo info with ``sha``, ``private``, ``siblings`` and ``cardData``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: file content with ``X-Repo-Commit``, ``ETag`` (git blob sha1, or
  sha256 for LFS files, with ``X-Linked-Etag`` and ``X-Linked-Size``).
- ``POST /api/validate-yaml``: checks that README.md metadata is a mapping and that ``model-index`` has the fields
  the Hub needs to render results (a subset of the Hub's schema).

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), so the
client raises its usual exceptions. Private repos answer ``RepoNotFound`` to requests without the owner's token.
Every request is appended to ``server.log`` as ``(method, path)`` so tests can check what was sent.
"""

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_THRESHOLD = 10 * 1024 * 1024
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict = field(default_factory=dict)  # name -> commit sha
    commits: dict = field(default_factory=dict)  # sha -> {"files": {path: (content_key, is_lfs)}, "message", "parent"}


class HubState:
    """Repos, commits and blobs of the server, guarded by one lock."""

    def __init__(self, users: dict[str, str]):
        self.users = users  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git sha1 or lfs sha256 -> content
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []

    def add_blob(self, content: bytes) -> str:
        sha = git_blob_sha1(content)
        self.blobs[sha] = content
        return sha

    def commit(self, repo: Repo, branch: str, files: dict, message: str) -> str:
        parent = repo.branches.get(branch)
        payload = json.dumps([parent, message, sorted((p, k) for p, (k, _) in files.items())]).encode()
        sha = hashlib.sha1(payload).hexdigest()
        repo.commits[sha] = {"files": files, "message": message, "parent": parent}
        repo.branches[branch] = sha
        return sha


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def validate_metadata(content: str) -> list[str]:
    """Errors in a README's YAML metadata, checked the way the Hub needs it to render a model card."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, flags=re.DOTALL)
    if match is None:
        return []
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        return [f"YAML does not parse: {error}"]
    if not isinstance(metadata, dict):
        return ["metadata must be a YAML mapping"]
    errors = []
    for key in ("tags", "datasets", "language"):
        if key in metadata and not isinstance(metadata[key], (list, str)):
            errors.append(f"`{key}` must be a list or a string")
    for model in metadata.get("model-index", []) or []:
        if not isinstance(model, dict) or not model.get("name"):
            errors.append("every model-index entry needs a `name`")
            continue
        for result in model.get("results", []):
            if not (result.get("task") or {}).get("type"):
                errors.append("model-index result without `task.type`")
            dataset = result.get("dataset") or {}
            if not dataset.get("type") or not dataset.get("name"):
                errors.append("model-index result without `dataset.type` and `dataset.name`")
            for metric in result.get("metrics") or [None]:
                if not isinstance(metric, dict) or not metric.get("type") or "value" not in metric:
                    errors.append("model-index metric without `type` and `value`")
    return errors


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer sets Content-Length
    server: "HubServer"

    def log_message(self, format, *args):  # quiet: tests read `server.state.log` instead
        pass

    # ---- plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200):
        self._send(status, json.dumps(value).encode())

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.server.state.users.get(auth.removeprefix("Bearer ").strip()) if auth else None

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        repo = self.server.state.repos.get(repo_id)
        user = self._user()
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(401 if user is None else 404, f"Repository {repo_id} not found", "RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You have no write access to {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> tuple[str, dict]:
        sha = repo.branches.get(revision, revision if revision in repo.commits else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo.commits[sha]

    def _dispatch(self):
        path = urlsplit(self.path).path
        self.body = self._read_body()  # read it all first: the connection is kept alive, also after an error
        self.server.state.log.append((self.command, unquote(path)))
        for method, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if (method == self.command or (method == "GET" and self.command == "HEAD")) and match:
                try:
                    with self.server.state.lock:
                        handler(self, **{k: unquote(v) for k, v in match.groupdict().items()})
                except HubError as error:
                    headers = {"X-Error-Message": error.message}
                    if error.code:
                        headers["X-Error-Code"] = error.code
                    self._send(error.status, json.dumps({"error": error.message}).encode(), headers)
                return
        self._send(404, json.dumps({"error": f"no route for {self.command} {path}"}).encode())

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ---- repos and branches
    def create_repo(self):
        request = json.loads(self.body)
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo_id = f"{request.get('organization') or user}/{request['name']}"
        if repo_id in self.server.state.repos:
            raise HubError(409, "You already created this model repo")
        repo = Repo(owner=user, private=request.get("visibility") == "private")
        sha = self.server.state.add_blob(GITATTRIBUTES)
        self.server.state.commit(repo, "main", {".gitattributes": (sha, False)}, "initial commit")
        self.server.state.repos[repo_id] = repo
        self._json({"url": f"{self.server.url}/{repo_id}", "name": repo_id})

    def create_branch(self, repo, branch):
        repo = self._repo(repo, write=True)
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        body = self.body
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit(repo, start)[0]
        self._json({})

    def repo_info(self, repo, revision="main"):
        repo_id, repo = repo, self._repo(repo)
        sha, commit = self._commit(repo, revision)
        siblings, card_data = [], None
        for path, (key, is_lfs) in sorted(commit["files"].items()):
            content = self.server.state.blobs[key]
            sibling = {"rfilename": path, "size": len(content), "blobId": git_blob_sha1(content)}
            if is_lfs:
                sibling["lfs"] = {"sha256": key, "size": len(content), "pointerSize": 134}
            siblings.append(sibling)
            if path == "README.md":
                match = re.match(r"^---\s*\n(.*?)\n---", content.decode(), flags=re.DOTALL)
                card_data = yaml.safe_load(match.group(1)) if match else None
        info = {"id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private}
        self._json({**info, "siblings": siblings, "cardData": card_data, "tags": (card_data or {}).get("tags", [])})

    # ---- upload: preupload, LFS batch and PUT, commit
    def preupload(self, repo, revision):
        repo = self._repo(repo, write=True)
        files = self._commit(repo, revision)[1]["files"]
        gitattributes = (
            self.server.state.blobs[files[".gitattributes"][0]].decode() if ".gitattributes" in files else ""
        )
        patterns = [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line]
        answer = []
        for entry in json.loads(self.body)["files"]:
            name = entry["path"].rsplit("/", 1)[-1]
            is_lfs = entry["size"] > LFS_THRESHOLD or any(fnmatch.fnmatch(name, p) for p in patterns)
            current = files.get(entry["path"])
            oid = (
                None
                if current is None
                else (current[0] if current[1] else git_blob_sha1(self.server.state.blobs[current[0]]))
            )
            answer.append(
                {
                    "path": entry["path"],
                    "uploadMode": "lfs" if is_lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json({"files": answer})

    def lfs_batch(self, repo):
        self._repo(repo, write=True)
        request = json.loads(self.body)
        objects = []
        for obj in request["objects"]:
            if obj["oid"] in self.server.state.blobs:
                objects.append({"oid": obj["oid"], "size": obj["size"]})  # already stored: no actions
            else:
                href = f"{self.server.url}/lfs/{obj['oid']}?size={obj['size']}"
                objects.append({**obj, "authenticated": True, "actions": {"upload": {"href": href}}})
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_put(self, oid):
        content = self.body
        expected_size = int(re.search(r"size=(\d+)", self.path).group(1))
        if hashlib.sha256(content).hexdigest() != oid or len(content) != expected_size:
            raise HubError(400, "LFS upload does not match its oid and size")
        self.server.state.blobs[oid] = content
        self._send(200)

    def commit(self, repo, revision):
        repo_id, repo = repo, self._repo(repo, write=True)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(repo.commits[repo.branches[revision]]["files"])
        message = ""
        for line in self.body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
            elif key == "file":
                files[value["path"]] = (self.server.state.add_blob(base64.b64decode(value["content"])), False)
            elif key == "lfsFile":
                if value["oid"] not in self.server.state.blobs:
                    raise HubError(422, f"LFS file {value['path']} was not uploaded before the commit")
                files[value["path"]] = (value["oid"], True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise HubError(400, f"commit operation {key!r} is not supported by the test server")
        sha = self.server.state.commit(repo, revision, files, message)
        self._json(
            {"commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
        )

    # ---- download and metadata validation
    def resolve(self, repo, revision, path):
        repo = self._repo(repo)
        sha, commit = self._commit(repo, revision)
        if path not in commit["files"]:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        key, is_lfs = commit["files"][path]
        content = self.server.state.blobs[key]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{key if is_lfs else git_blob_sha1(content)}"'}
        if is_lfs:
            headers.update({"X-Linked-Etag": f'"{key}"', "X-Linked-Size": str(len(content))})
        self._send(200, content, headers, content_type="application/octet-stream")

    def validate_yaml(self):
        errors = validate_metadata(json.loads(self.body)["content"])
        self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

    ROUTES = [
        ("POST", r"/api/repos/create", create_repo),
        ("POST", r"/api/validate-yaml", validate_yaml),
        ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", create_branch),
        ("POST", rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", preupload),
        ("POST", rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", commit),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", lfs_batch),
        ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", lfs_put),
        ("GET", rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", repo_info),
        ("GET", rf"/api/models/{_REPO}", repo_info),
        ("GET", rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", resolve),
    ]


class HubServer(ThreadingHTTPServer):
    """``with HubServer(users={"hf_token": "alice"}) as hub:`` serves on ``hub.url`` from a daemon thread."""

    daemon_threads = True

    def __init__(self, users: dict[str, str]):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState(users)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "HubServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
