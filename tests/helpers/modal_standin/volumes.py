"""Volumes: each is a host folder DIR/volumes/<volume_id>/ (bound into sandboxes that mount it).

Uploads follow VolumePutFiles2: files are lists of 8 MiB blocks named by the SHA-256 of their
bytes without trailing zeros; blocks the server lacks come back as missing with a PUT URL on the
HTTP listener, the client PUTs them (SHA-256 checked) and sends the request again; once nothing is
missing the files are written. Blocks are kept in DIR/blocks/<sha256> (so an upload of content the
server already has sends nothing). Downloads (VolumeGetFile2) are GET URLs of 8 MiB ranges.
URLs carry an HMAC so that only the ones the server handed out work.
"""
import asyncio
import hashlib
import hmac
import os
import secrets
import shutil
import stat
import time
import urllib.parse

from sandboxes import new_id

BLOCK = 8 * 1024 * 1024
V1, V2 = 1, 2
FILE, DIRECTORY, SYMLINK, FIFO, SOCKET = 1, 2, 3, 4, 5


class VolumeError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code            # a grpc status code name
        self.message = message


def strip_zeros(data):
    return data.rstrip(b"\0")


class Volume:
    def __init__(self, store, name, env, version):
        self.id = new_id("vo-")
        self.name = name
        self.env = env
        self.version = version
        self.dir = os.path.join(store.root, self.id)
        self.created_at = time.time()
        self.commits = 0
        self.reloads = 0
        os.makedirs(self.dir, exist_ok=True)

    def public(self):
        return {"id": self.id, "name": self.name, "environment": self.env, "version": self.version,
                "dir": self.dir, "commits": self.commits, "reloads": self.reloads}


class VolumeStore:
    def __init__(self, state_dir, http_url):
        self.root = os.path.join(state_dir, "volumes")
        self.blocks = os.path.join(state_dir, "blocks")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.blocks, exist_ok=True)
        self.http_url = http_url
        self.key = secrets.token_bytes(32)
        self.by_key = {}
        self.by_id = {}

    # -- objects

    def get_or_create(self, env, name, creation_type, version):
        key = (env, name)
        vol = self.by_key.get(key) if name else None
        if creation_type == 5 or (creation_type == 4 and not name):
            vol = Volume(self, "", env, version or V2)      # ephemeral / anonymous
            self.by_id[vol.id] = vol
            return vol
        if creation_type == 0:
            if vol is None:
                raise VolumeError("NOT_FOUND", "Volume '%s' not found in environment '%s'" % (name, env))
            return vol
        if creation_type == 2 and vol is not None:
            raise VolumeError("ALREADY_EXISTS", "Volume '%s' already exists in environment '%s'" % (name, env))
        if creation_type == 3 and vol is not None:
            self.delete(vol)
            vol = None
        if vol is None:
            vol = Volume(self, name, env, version or V2)
            self.by_key[key] = vol
            self.by_id[vol.id] = vol
        return vol

    def get(self, volume_id):
        vol = self.by_id.get(volume_id)
        if vol is None:
            raise VolumeError("NOT_FOUND", "no volume with id %r" % volume_id)
        return vol

    def delete(self, vol):
        self.by_id.pop(vol.id, None)
        if self.by_key.get((vol.env, vol.name)) is vol:
            del self.by_key[(vol.env, vol.name)]
        shutil.rmtree(vol.dir, ignore_errors=True)

    # -- paths

    @staticmethod
    def rel(path):
        """Volume-relative path ("" = the root), or raises INVALID_ARGUMENT."""
        parts = []
        for p in (path or "").split("/"):
            if p == "..":
                raise VolumeError("INVALID_ARGUMENT", "volume path %r contains '..'" % path)
            if p and p != ".":
                parts.append(p)
        return "/".join(parts)

    def host(self, vol, rel):
        return os.path.join(vol.dir, rel) if rel else vol.dir

    # -- list

    def _entry(self, rel, st):
        mode = st.st_mode
        t = (FILE if stat.S_ISREG(mode) else DIRECTORY if stat.S_ISDIR(mode) else
             SYMLINK if stat.S_ISLNK(mode) else FIFO if stat.S_ISFIFO(mode) else
             SOCKET if stat.S_ISSOCK(mode) else 0)
        return {"path": rel, "type": t, "mtime": int(st.st_mtime),
                "size": st.st_size if t == FILE else 0}

    def list(self, vol, path, recursive, max_entries=None):
        rel = self.rel(path)
        host = self.host(vol, rel)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            raise VolumeError("NOT_FOUND", "No such file or directory: '%s' in volume %s" % (path, vol.id))
        if not stat.S_ISDIR(st.st_mode):
            return [self._entry(rel, st)]
        out = []
        if recursive:
            for dirpath, dirnames, filenames in os.walk(host):
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    full = os.path.join(dirpath, name)
                    out.append(self._entry(os.path.relpath(full, vol.dir), os.lstat(full)))
        else:
            for name in sorted(os.listdir(host)):
                full = os.path.join(host, name)
                out.append(self._entry(os.path.relpath(full, vol.dir), os.lstat(full)))
        out.sort(key=lambda e: e["path"])
        if max_entries:
            out = out[:max_entries]
        return out

    # -- download

    def _sign(self, text):
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def get_urls(self, vol, path, start, length):
        rel = self.rel(path)
        host = self.host(vol, rel)
        if not rel or not os.path.isfile(host):
            raise VolumeError("NOT_FOUND", "No such file: '%s' in volume %s" % (path, vol.id))
        size = os.path.getsize(host)
        start = min(start, size)
        end = size if not length else min(size, start + length)
        urls = []
        pos = start
        while pos < end:
            n = min(BLOCK, end - pos)
            q = urllib.parse.urlencode({"path": rel, "start": pos, "len": n,
                                        "sig": self._sign("GET|%s|%s|%d|%d" % (vol.id, rel, pos, n))})
            urls.append("%s/files/%s?%s" % (self.http_url, vol.id, q))
            pos += n
        return urls, size, start, end - start

    def http_get(self, volume_id, query):
        """(status, body) for a GET of a download URL (runs in the HTTP thread)."""
        q = urllib.parse.parse_qs(query)
        try:
            rel, start, n, sig = q["path"][0], int(q["start"][0]), int(q["len"][0]), q["sig"][0]
        except (KeyError, ValueError, IndexError):
            return 400, b"bad download URL\n"
        if not hmac.compare_digest(sig, self._sign("GET|%s|%s|%d|%d" % (volume_id, rel, start, n))):
            return 403, b"bad signature\n"
        vol = self.by_id.get(volume_id)
        if vol is None:
            return 404, b"no such volume\n"
        try:
            with open(self.host(vol, self.rel(rel)), "rb") as f:
                f.seek(start)
                return 200, f.read(n)
        except (OSError, VolumeError):
            return 404, b"no such file\n"

    # -- upload

    def put_url(self, sha_hex):
        return "%s/blocks/%s?sig=%s" % (self.http_url, sha_hex, self._sign("PUT|" + sha_hex))

    def http_put(self, sha_hex, query, body):
        """(status, body) for a PUT of a block (runs in the HTTP thread)."""
        sig = (urllib.parse.parse_qs(query).get("sig") or [""])[0]
        if len(sha_hex) != 64 or not hmac.compare_digest(sig, self._sign("PUT|" + sha_hex)):
            return 403, b"bad signature\n"
        got = hashlib.sha256(body).hexdigest()
        if got != sha_hex:
            return 400, ("SHA-256 of the body is %s, the URL is for %s\n" % (got, sha_hex)).encode()
        path = os.path.join(self.blocks, sha_hex)
        tmp = "%s.tmp-%s" % (path, secrets.token_hex(6))
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        return 200, ("stored %s\n" % sha_hex).encode()

    def _have(self, sha_hex):
        return os.path.exists(os.path.join(self.blocks, sha_hex))

    @staticmethod
    def _existing_block_sha(host, index):
        try:
            with open(host, "rb") as f:
                f.seek(index * BLOCK)
                return hashlib.sha256(strip_zeros(f.read(BLOCK))).hexdigest()
        except OSError:
            return None

    def _plan(self, vol, files, disallow_overwrite):
        """(missing [(file_index, block_index, sha)], writes [(host, file)]) or raises."""
        missing, writes = [], []
        for fi, f in enumerate(files):
            rel = self.rel(f.path)
            if not rel:
                raise VolumeError("INVALID_ARGUMENT", "file %d has an empty path" % fi)
            host = self.host(vol, rel)
            if os.path.isdir(host):
                raise VolumeError("INVALID_ARGUMENT", "'%s' is a directory in volume %s" % (rel, vol.id))
            exists = os.path.lexists(host)
            if exists and disallow_overwrite:
                raise VolumeError("ALREADY_EXISTS", "file '%s' already exists in volume %s" % (rel, vol.id))
            want = (f.size + BLOCK - 1) // BLOCK
            if len(f.blocks) != want:
                raise VolumeError("INVALID_ARGUMENT", "file '%s' of %d bytes needs %d blocks of 8 MiB, "
                                  "got %d" % (rel, f.size, want, len(f.blocks)))
            for bi, b in enumerate(f.blocks):
                if len(b.contents_sha256) != 32:
                    raise VolumeError("INVALID_ARGUMENT", "block %d of '%s': contents_sha256 must be "
                                      "32 bytes, got %d" % (bi, rel, len(b.contents_sha256)))
                sha = b.contents_sha256.hex()
                if not self._have(sha) and not (exists and self._existing_block_sha(host, bi) == sha):
                    missing.append((fi, bi, sha))
            writes.append((host, f))
        return missing, writes

    def _write(self, host, f):
        os.makedirs(os.path.dirname(host), exist_ok=True)
        tmp = "%s.standin-tmp-%s" % (host, secrets.token_hex(6))
        with open(tmp, "wb") as out:
            for bi, b in enumerate(f.blocks):
                sha = b.contents_sha256.hex()
                length = min(BLOCK, f.size - bi * BLOCK)
                block_path = os.path.join(self.blocks, sha)
                if os.path.exists(block_path):
                    with open(block_path, "rb") as bf:
                        data = bf.read()
                else:                                   # the same block of the current file
                    with open(host, "rb") as cur:
                        cur.seek(bi * BLOCK)
                        data = strip_zeros(cur.read(BLOCK))
                out.write(data[:length])
                if len(data) < length:
                    out.write(b"\0" * (length - len(data)))
            out.truncate(f.size)
        if f.HasField("mode"):
            os.chmod(tmp, f.mode & 0o7777)
        os.replace(tmp, host)

    def _put_files_sync(self, vol, files, disallow_overwrite):
        missing, writes = self._plan(vol, files, disallow_overwrite)
        if missing:
            return [(fi, bi, self.put_url(sha)) for fi, bi, sha in sorted(missing)]
        for host, f in writes:
            self._write(host, f)
        return []

    async def put_files(self, vol, files, disallow_overwrite):
        """[(file_index, block_index, put_url)] of the missing blocks; [] once written."""
        return await asyncio.to_thread(self._put_files_sync, vol, files, disallow_overwrite)

    # -- remove

    def remove(self, vol, path, recursive):
        rel = self.rel(path)
        if not rel:
            raise VolumeError("INVALID_ARGUMENT", "cannot remove the root of volume %s" % vol.id)
        host = self.host(vol, rel)
        if not os.path.lexists(host):
            raise VolumeError("NOT_FOUND", "No such file or directory: '%s' in volume %s" % (path, vol.id))
        if os.path.isdir(host) and not os.path.islink(host):
            if recursive:
                shutil.rmtree(host)
            elif os.listdir(host):
                raise VolumeError("INVALID_ARGUMENT", "'%s' is a non-empty directory: remove it with "
                                  "recursive=true" % path)
            else:
                os.rmdir(host)
        else:
            os.unlink(host)
