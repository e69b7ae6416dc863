"""A real HTTP server on 127.0.0.1 that serves model repos the way the Hugging Face Hub does.

Only what huggingface_hub 2.4 reads is implemented (see ``shared/reference.md``, "Hugging Face
Hub", and ``huggingface_hub/file_download.py``, ``hf_api.py``, ``utils/_http.py``):

- ``GET /api/models/{owner}/{repo}[/revision/{revision}]`` (``HfApi.model_info``): JSON with
  ``id``, ``sha`` (the commit) and ``siblings`` (``rfilename``; with ``?blobs=true`` also ``size``,
  ``blobId`` and, for large files, ``lfs: {sha256, size, pointerSize}``);
- ``GET /api/models/{owner}/{repo}/tree/{revision}`` (``snapshot_download``): a JSON list of
  ``{type: "file", path, size, oid}``;
- ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{path}`` (``hf_hub_download``): headers
  ``X-Repo-Commit``, ``ETag`` (quoted; the sha256 for large files, as the Hub gives for LFS
  files, a git blob sha1 otherwise) and ``Content-Length``; ``Range: bytes=N-`` answered with
  206 and ``Content-Range`` (huggingface_hub resumes interrupted downloads that way);
- errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound``, ``RevisionNotFound`` or
  ``EntryNotFound`` (the last with ``X-Repo-Commit``).

Each repo has commits (each a full set of files) and refs (branches and tags) naming commits;
a revision is a ref or a full commit sha. ``cut(repo, path, after)`` makes the next download of
a file stop after ``after`` bytes (headers promise the whole file, then the connection closes)
and answers 503 to every further request for it until ``heal()``: an interrupted download.
Every request is logged in ``requests`` as ``(method, path)``.
"""

import hashlib
import http.server
import json
import os
import re
import socket
import threading
import urllib.parse

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".pth")


def _git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Repo:
    def __init__(self):
        self.commits = {}  # sha -> {path: bytes}
        self.refs = {}  # name -> sha

    def resolve(self, revision):
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class HubServer:
    """Start with ``start()`` (returns the base URL), stop with ``stop()``."""

    def __init__(self):
        self.repos = {}
        self.requests = []
        self._cuts = {}  # (repo_id, path) -> bytes still allowed, None once cut
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        # Open client connections: huggingface_hub keeps connections alive, and a stopped server
        # must not go on answering on them.
        self._connections = set()

    # ------------------------------------------------------------------ repos

    def add_commit(self, repo_id, files, refs=("main",)):
        """Add a commit holding ``files`` (``{path: bytes or a local file path}``), point the
        ``refs`` at it, and return its sha."""
        data = {}
        for path, value in files.items():
            if isinstance(value, (str, os.PathLike)):
                with open(value, "rb") as f:
                    value = f.read()
            data[path] = bytes(value)
        repo = self.repos.setdefault(repo_id, _Repo())
        digest = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for path in sorted(data):
            digest.update(path.encode() + hashlib.sha256(data[path]).digest())
        sha = digest.hexdigest()
        repo.commits[sha] = data
        for ref in refs:
            repo.refs[ref] = sha
        return sha

    def cut(self, repo_id, path, after):
        with self._lock:
            self._cuts[(repo_id, path)] = after

    def heal(self):
        with self._lock:
            self._cuts.clear()

    def fetched(self, suffix):
        """How many GETs of files whose path ends with ``suffix`` were answered."""
        return sum(1 for m, p in self.requests if m == "GET" and p.endswith(suffix))

    # ------------------------------------------------------------------ server

    def start(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self):
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self, head=False)

            def do_HEAD(self):
                server._handle(self, head=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self):
        """Stop listening and close every open connection (the network is gone)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------------------ routes

    def _handle(self, h, head):
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        with self._lock:
            self.requests.append((h.command, path))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/(.+?))?/?", parsed.path)
        if m:
            repo_id = urllib.parse.unquote(m.group(1))
            kind = m.group(2) or "revision"
            revision = urllib.parse.unquote(m.group(3) or "main")
            return self._api(h, repo_id, kind, revision, query, head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parsed.path)
        if m:
            repo_id = urllib.parse.unquote(m.group(1))
            revision = urllib.parse.unquote(m.group(2))
            return self._file(h, repo_id, revision, urllib.parse.unquote(m.group(3)), head)
        return self._error(h, 404, None, head)

    def _lookup(self, h, repo_id, revision, head):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", head)
            return None, None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(h, 404, "RevisionNotFound", head)
            return None, None
        return repo, sha

    def _api(self, h, repo_id, kind, revision, query, head):
        repo, sha = self._lookup(h, repo_id, revision, head)
        if repo is None:
            return
        files = repo.commits[sha]
        if kind == "tree":
            body = [
                {"type": "file", "path": p, "size": len(d), "oid": _git_blob_sha1(d)}
                for p, d in sorted(files.items())
            ]
        else:
            siblings = []
            for p, d in sorted(files.items()):
                sibling = {"rfilename": p}
                if query.get("blobs") == ["True"] or query.get("blobs") == ["true"]:
                    sibling.update(size=len(d), blobId=_git_blob_sha1(d))
                    if p.endswith(LFS_SUFFIXES):
                        sibling["lfs"] = {
                            "sha256": hashlib.sha256(d).hexdigest(),
                            "size": len(d),
                            "pointerSize": 134,
                        }
                siblings.append(sibling)
            body = {"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": siblings}
        data = json.dumps(body).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _file(self, h, repo_id, revision, path, head):
        repo, sha = self._lookup(h, repo_id, revision, head)
        if repo is None:
            return
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(h, 404, "EntryNotFound", head, commit=sha)
        key = (repo_id, path)
        with self._lock:
            cut = self._cuts.get(key, False)
            if not head and cut is not False:
                self._cuts[key] = None  # cut once; then the file is unavailable
        if cut is None:
            return self._error(h, 503, None, head)
        etag = hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else None
        etag = etag or _git_blob_sha1(data)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if match and not head:
            start = min(int(match.group(1)), len(data))
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", sha)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        body = data[start:]
        if cut is not False:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        h.wfile.write(body)

    def _error(self, h, status, code, head, commit=None):
        body = json.dumps({"error": code or "error"}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
