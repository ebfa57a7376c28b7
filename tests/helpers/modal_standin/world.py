"""Everything the stand-in knows: apps, secrets, images, volumes, sandboxes, tokens, faults and
the call log, plus the credential check every call goes through. Lives on the asyncio loop; the
HTTP thread reaches it only through World.call_soon (run_coroutine_threadsafe)."""
import asyncio
import os
import re
import time

import grpc

import box
import images
import rpc
import volumes
from rpc import Fail
from sandboxes import new_id

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_name(name):
    return name or "main"


class Auth:
    def __init__(self, world, token_id, token_secret):
        self.world = world
        self.token_id = token_id
        self.token_secret = token_secret
        self.tokens = world.tokens

    def check(self, method, context, request):
        md = {}
        for k, v in context.invocation_metadata() or ():
            md[k.lower()] = v
        if method.service_short == "ModalClient":
            tid, secret = md.get("x-modal-token-id"), md.get("x-modal-token-secret")
            if not tid or not secret:
                raise Fail(grpc.StatusCode.UNAUTHENTICATED,
                           "missing credentials: send x-modal-token-id and x-modal-token-secret "
                           "(MODAL_TOKEN_ID / MODAL_TOKEN_SECRET)")
            if tid != self.token_id or secret != self.token_secret:
                raise Fail(grpc.StatusCode.UNAUTHENTICATED,
                           "Token ID or secret is invalid (token id %s)" % tid)
            return
        auth = md.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise Fail(grpc.StatusCode.UNAUTHENTICATED,
                       "missing router credentials: send authorization: Bearer <jwt from "
                       "TaskGetCommandRouterAccess>")
        task = self.tokens.check_router(auth[len("Bearer "):].strip())
        if task is None:
            raise Fail(grpc.StatusCode.UNAUTHENTICATED,
                       "the command router JWT is invalid, expired or revoked: get a new one with "
                       "TaskGetCommandRouterAccess")
        want = getattr(request, "task_id", None) if request is not None else None
        if want and want != task:
            raise Fail(grpc.StatusCode.PERMISSION_DENIED,
                       "this JWT was issued for task %s, not %s" % (task, want))


class World:
    def __init__(self, protos, state_dir, http_url, grpc_port, token_id, token_secret,
                 bwrap, build_run="exec", jwt_ttl=3600.0):
        self.protos = protos
        self.state_dir = state_dir
        self.http_url = http_url
        self.grpc_port = grpc_port
        self.bwrap = bwrap
        self.host = box.Host(self._empty_file())
        self.tokens = rpc.Tokens(jwt_ttl)
        self.faults = rpc.Faults()
        self.log = rpc.CallLog()
        self.auth = Auth(self, token_id, token_secret)
        self.apps = {}                 # (env, name) -> {"id", "name", "environment", "created_at"}
        self.app_ids = {}
        self.secrets = {}              # id -> {"id", "name", "environment", "env": {...}}
        self.named_secrets = {}        # (env, name) -> id
        self.environments = {}
        self.images = images.ImageStore(self, build_run)
        self.volumes = volumes.VolumeStore(state_dir, http_url)
        self.sandboxes = {}            # id -> Sandbox
        self.by_task = {}              # task id -> Sandbox
        self.idempotent = {}           # (method, x-idempotency-key) -> what the first call made
        self.loop = None

    def _empty_file(self):
        path = os.path.join(self.state_dir, "empty")
        open(path, "wb").close()
        os.chmod(path, 0o444)
        return path

    # -- apps and secrets

    def app_get_or_create(self, env, name, creation_type):
        key = (env_name(env), name)
        app = self.apps.get(key)
        if app is None:
            if creation_type == 0:
                raise Fail(grpc.StatusCode.NOT_FOUND,
                           "App '%s' not found in environment '%s'" % (name, env_name(env)))
            app = {"id": new_id("ap-"), "name": name, "environment": env_name(env),
                   "created_at": time.time()}
            self.apps[key] = app
            self.app_ids[app["id"]] = app
        elif creation_type == 2:
            raise Fail(grpc.StatusCode.ALREADY_EXISTS, "App '%s' already exists" % name)
        return app

    def check_env_dict(self, env_dict):
        for k in env_dict:
            if not ENV_KEY.match(k):
                raise Fail(grpc.StatusCode.INVALID_ARGUMENT,
                           "invalid secret key %r: keys must match [A-Za-z_][A-Za-z0-9_]*" % k)

    def secret_set(self, env, name, env_dict, creation_type=3):
        """Creates or replaces a named secret (SecretGetOrCreate types 1-3 and the admin API)."""
        self.check_env_dict(env_dict)
        key = (env_name(env), name)
        sid = self.named_secrets.get(key)
        if sid and creation_type == 2:
            raise Fail(grpc.StatusCode.ALREADY_EXISTS,
                       "Secret '%s' already exists in environment '%s'" % (name, env_name(env)))
        if sid and creation_type == 1:
            return self.secrets[sid]
        sec = {"id": sid or new_id("st-"), "name": name, "environment": env_name(env),
               "env": dict(env_dict), "created_at": time.time()}
        self.secrets[sec["id"]] = sec
        self.named_secrets[key] = sec["id"]
        return sec

    def secret_env(self, secret_ids):
        env = {}
        for sid in secret_ids:
            sec = self.secrets.get(sid)
            if sec is None:
                raise Fail(grpc.StatusCode.NOT_FOUND, "Secret %s not found" % sid)
            env.update(sec["env"])
        return env

    # -- state for /admin/state

    def snapshot(self):
        named = {}
        ephemeral = {}
        for sec in self.secrets.values():
            if sec["name"]:
                named[sec["name"]] = sorted(sec["env"])
            else:
                ephemeral[sec["id"]] = sorted(sec["env"])
        vols = {}
        for vol in self.volumes.by_id.values():
            vols[vol.name or "ephemeral:" + vol.id] = vol.public()
        return {
            "sandboxes": [sb.public() for sb in self.sandboxes.values()],
            "calls": list(self.log.calls),
            "apps": {a["name"]: a for a in self.apps.values()},
            "images": [img.public() for img in self.images.by_id.values()],
            "secrets": named,
            "ephemeral_secrets": ephemeral,
            "volumes": vols,
            "faults": self.faults.public(),
        }

    async def shutdown(self):
        for sb in self.sandboxes.values():
            sb.finish(3, 0, "the stand-in server stopped")
        await self.images.shutdown()
        for sb in list(self.sandboxes.values()):
            await sb.reap()

    def call_soon(self, fn, *args, timeout=30):
        """Runs fn(*args) on the loop from another thread and returns its result."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)
