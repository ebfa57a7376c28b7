"""gRPC plumbing of the stand-in: every call is recorded, checked for credentials, offered to the
injected faults, then handed to its handler; errors become gRPC statuses.

Handlers are `async def NAME(request, context)` methods (an async generator for server streams,
taking the request iterator for client streams) on the objects given to `handlers()`. They fail
with `raise Fail(grpc.StatusCode.X, "message")`.
"""
import asyncio
import base64
import collections
import hashlib
import hmac
import json
import secrets
import sys
import time
import traceback

import grpc

SECRET_HEADERS = {"x-modal-token-secret", "authorization", "x-modal-auth-token"}
SECRET_MAP_FIELDS = {"env_dict", "env", "contents"}   # map fields whose values may be secrets
MAX_RECORDED_CALLS = 100000
MAX_LISTED = 20                 # items of a repeated field shown in the call log


class Fail(Exception):
    def __init__(self, code, message, trailers=()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = tuple(trailers)


def code_by_name(name):
    code = grpc.StatusCode.__members__.get(str(name).upper())
    if code is None or code == grpc.StatusCode.OK:
        raise ValueError("unknown gRPC status code name %r (use an error code such as INTERNAL or "
                         "UNAVAILABLE)" % (name,))
    return code


# ---------------------------------------------------------------------------------------------
# tokens: the AuthTokenGet token and the router JWTs

def _b64(data):
    return base64.b64encode(data).decode().rstrip("=")


def _b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Tokens:
    """JWTs signed with a per-process key. Payloads are standard base64 without padding and made
    to contain neither '+' nor '/' (a nonce is varied until so), so base64 and base64url decoders
    both read them (modal-js 0.7.2 decodes the auth token with atob)."""

    def __init__(self, router_ttl=3600.0):
        self.key = secrets.token_bytes(32)
        self.router_ttl = router_ttl
        self.router = {}          # jwt -> {"task_id", "exp"}

    def make(self, claims):
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        for n in range(1000):
            body = dict(claims, jti="%x" % (secrets.randbits(48) + n))
            raw = json.dumps(body, separators=(",", ":")).encode()
            raw += b" " * ((3 - len(raw) % 3) % 3)          # no padding needed
            payload = _b64(raw)
            if "+" not in payload and "/" not in payload:
                break
        signing = ("%s.%s" % (header, payload)).encode()
        sig = _b64url(hmac.new(self.key, signing, hashlib.sha256).digest())
        return "%s.%s.%s" % (header, payload, sig)

    def auth_token(self):
        now = int(time.time())
        return self.make({"sub": "standin", "iat": now, "exp": now + 3600})

    def router_jwt(self, task_id):
        now = time.time()
        exp = now + self.router_ttl
        token = self.make({"task_id": task_id, "iat": int(now), "exp": int(exp)})
        self.router[token] = {"task_id": task_id, "exp": exp}
        return token

    def check_router(self, token):
        """The task id the JWT was issued for, or None when unknown, revoked or expired."""
        info = self.router.get(token)
        if not info or info["exp"] < time.time():
            return None
        return info["task_id"]

    def revoke_router(self):
        self.router.clear()


# ---------------------------------------------------------------------------------------------
# faults

FAULT_KINDS = {"unavailable", "status", "slow", "slow_reply", "cut_stream", "rate_limit",
               "unauthenticated", "sandbox_dies"}


class Faults:
    def __init__(self):
        self.items = []
        self.create_times = collections.deque()

    def add(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object such as {\"method\": \"SandboxCreate\", "
                             "\"kind\": \"unavailable\", \"count\": 2}")
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError("fault kind %r is not one of %s" % (kind, ", ".join(sorted(FAULT_KINDS))))
        f = dict(spec)
        if kind == "sandbox_dies":
            f["after"] = float(spec.get("after", 0))
            f["remaining"] = int(spec.get("count", 1))
        else:
            if not isinstance(spec.get("method"), str) or not spec["method"]:
                raise ValueError("fault %r needs \"method\": the RPC name, e.g. \"SandboxCreate\"" % kind)
            if kind == "rate_limit":
                f["per_second"] = float(spec.get("per_second", 0))
                if f["per_second"] <= 0:
                    raise ValueError("rate_limit needs \"per_second\" > 0")
                f["remaining"] = None                      # until DELETE /admin/faults
            else:
                f["remaining"] = int(spec.get("count", 1))
            if kind == "status":
                f["grpc_code"] = code_by_name(spec.get("code", "INTERNAL"))
            if kind in ("slow", "slow_reply"):
                f["seconds"] = float(spec.get("seconds", 1))
            if kind == "cut_stream":
                f["after"] = int(spec.get("after", 0))
            if "http_status" in spec:
                f["http_status"] = int(spec["http_status"])
        self.items.append(f)
        return f

    def clear(self):
        self.items.clear()
        self.create_times.clear()

    def public(self):
        return [{k: v for k, v in f.items() if k != "grpc_code"} for f in self.items]

    def take(self, method, kind):
        """The first live fault of this kind for method (its count is used up by one), or None."""
        for f in self.items:
            if f["kind"] == kind and f.get("method") in (method, "*") and f["remaining"] != 0:
                if f["remaining"] is not None:
                    f["remaining"] -= 1
                return f
        return None

    def take_sandbox_death(self):
        for f in self.items:
            if f["kind"] == "sandbox_dies" and f["remaining"] > 0:
                f["remaining"] -= 1
                return f["after"]
        return None

    def rate_limited(self, method):
        """Seconds to wait when a rate_limit fault refuses this call now, else None."""
        for f in self.items:
            if f["kind"] == "rate_limit" and f.get("method") in (method, "*"):
                now = time.monotonic()
                while self.create_times and now - self.create_times[0] >= 1.0:
                    self.create_times.popleft()
                if len(self.create_times) >= f["per_second"]:
                    return max(0.1, 1.0 - (now - self.create_times[0]))
                self.create_times.append(now)
                return None
        return None


def retry_policy_trailer(protos, seconds):
    policy = protos.api.RPCRetryPolicy(retry_after_secs=seconds)
    detail = protos.any(type_url="type.googleapis.com/modal.client.RPCRetryPolicy",
                        value=policy.SerializeToString())
    status = protos.api.RPCStatus(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                  message="rate limit exceeded: retry in %.2fs" % seconds,
                                  details=[detail])
    return ("grpc-status-details-bin", status.SerializeToString())


# ---------------------------------------------------------------------------------------------
# the call log

def _summary(msg, depth=0):
    """A JSON-able view of a message for the call log: bytes shown as their length, values of
    env maps hidden."""
    out = {}
    for field, value in msg.ListFields():
        out[field.name] = _value(field, value, depth)
    return out


def _value(field, value, depth):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        vf = field.message_type.fields_by_name["value"]
        if field.name in SECRET_MAP_FIELDS:
            return {k: "<set>" for k in value}
        if vf.message_type is not None:
            return {k: _summary(v, depth + 1) for k, v in value.items()}
        return dict(value)
    if field.label == field.LABEL_REPEATED:
        out = [_one(field, v, depth) for v in value[:MAX_LISTED]]
        if len(value) > MAX_LISTED:
            out.append("... %d more" % (len(value) - MAX_LISTED))
        return out
    return _one(field, value, depth)


def _one(field, v, depth):
    if field.type == field.TYPE_BYTES:
        return "<%d bytes>" % len(v)
    if field.message_type is not None:
        return _summary(v, depth + 1) if depth < 8 else "<message>"
    return v


def _metadata(context):
    out = {}
    for key, value in context.invocation_metadata() or ():
        key = key.lower()
        if key in SECRET_HEADERS:
            value = "<set>"
        elif isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        out[key] = value
    return out


class CallLog:
    def __init__(self):
        self.calls = []

    def start(self, method, context, request):
        rec = {"method": method.name, "service": method.service_short, "code": None,
               "metadata": _metadata(context), "time": time.time()}
        if request is not None:
            try:
                rec["request"] = _summary(request)
            except Exception:                              # the log must never break a call
                rec["request"] = "<unreadable>"
        if len(self.calls) < MAX_RECORDED_CALLS:
            self.calls.append(rec)
        return rec


# ---------------------------------------------------------------------------------------------
# the handler wrapper

class Gate:
    """What every call passes through. auth(method, context, request) raises Fail when the
    credentials are wrong."""

    def __init__(self, protos, faults, log, auth):
        self.protos = protos
        self.faults = faults
        self.log = log
        self.auth = auth

    async def before(self, method, context, request):
        slow = self.faults.take(method.name, "slow")
        if slow:
            await asyncio.sleep(slow["seconds"])
        for kind in ("unavailable", "status"):
            f = self.faults.take(method.name, kind)
            if f:
                code = grpc.StatusCode.UNAVAILABLE if kind == "unavailable" else f["grpc_code"]
                raise Fail(code, "injected fault: %s on %s" % (code.name, method.name))
        f = self.faults.take(method.name, "unauthenticated")
        if f:
            if method.service_short == "TaskCommandRouter":
                self.auth.tokens.revoke_router()
            raise Fail(grpc.StatusCode.UNAUTHENTICATED,
                       "injected fault: the credentials of this %s call were revoked" % method.name)
        self.auth.check(method, context, request)
        wait = self.faults.rate_limited(method.name)
        if wait is not None:
            raise Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "too many %s calls per second (injected rate limit)" % method.name,
                       [retry_policy_trailer(self.protos, wait)])


async def _abort(context, rec, exc):
    if isinstance(exc, Fail):
        rec["code"] = exc.code.name
        rec["message"] = exc.message
        await context.abort(exc.code, exc.message, exc.trailers)
    rec["code"] = "INTERNAL"
    rec["message"] = "stand-in bug: %r" % (exc,)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    await context.abort(grpc.StatusCode.INTERNAL, "stand-in server error: %r" % (exc,))


def _unary(gate, method, fn):
    async def handle(request, context):
        rec = gate.log.start(method, context, request)
        try:
            await gate.before(method, context, request)
            response = await fn(request, context)
            # slow_reply: the work is done, the answer comes late (a client interrupted now never
            # learns what was made)
            late = gate.faults.take(method.name, "slow_reply")
            if late:
                await asyncio.sleep(late["seconds"])
        except asyncio.CancelledError:
            rec["code"] = "CANCELLED"
            raise
        except Exception as exc:                           # noqa: BLE001 - every error is a status
            if rec["code"] is not None:
                raise                                      # context.abort's own exception
            await _abort(context, rec, exc)
        rec["code"] = "OK"
        return response
    return handle


def _server_stream(gate, method, fn):
    async def handle(request, context):
        rec = gate.log.start(method, context, request)
        sent = 0
        try:
            await gate.before(method, context, request)
            cut = gate.faults.take(method.name, "cut_stream")
            async for msg in fn(request, context):
                if cut and sent >= cut["after"]:
                    break
                yield msg
                sent += 1
            if cut:
                raise Fail(grpc.StatusCode.UNAVAILABLE,
                           "injected fault: stream cut after %d messages" % sent)
        except asyncio.CancelledError:
            rec["code"] = "CANCELLED"
            raise
        except Exception as exc:                           # noqa: BLE001
            if rec["code"] is not None:
                raise
            rec["sent"] = sent
            await _abort(context, rec, exc)
        rec["code"] = "OK"
        rec["sent"] = sent
    return handle


def _client_stream(gate, method, fn):
    async def handle(request_iterator, context):
        rec = gate.log.start(method, context, None)
        try:
            await gate.before(method, context, None)
            response = await fn(request_iterator, context)
        except asyncio.CancelledError:
            rec["code"] = "CANCELLED"
            raise
        except Exception as exc:                           # noqa: BLE001
            if rec["code"] is not None:
                raise
            await _abort(context, rec, exc)
        rec["code"] = "OK"
        return response
    return handle


def _unimplemented(method):
    message = "the stand-in does not implement %s" % method.name
    if method.server_streaming:
        async def stream(request, context):
            raise Fail(grpc.StatusCode.UNIMPLEMENTED, message)
            yield                                          # an async generator
        return stream

    async def fn(request, context):
        raise Fail(grpc.StatusCode.UNIMPLEMENTED, message)
    return fn


class _CatchAll(grpc.GenericRpcHandler):
    """Any other method: recorded, then UNIMPLEMENTED (so a client's unexpected call shows in
    /admin/state instead of vanishing)."""

    def __init__(self, gate):
        self.gate = gate

    def service(self, details):
        path = details.method
        service, _, name = path.lstrip("/").rpartition("/")

        class _M:
            pass
        m = _M()
        m.name, m.service_short = name, service.rsplit(".", 1)[-1]

        async def handle(request, context):
            rec = self.gate.log.start(m, context, None)
            rec["code"] = "UNIMPLEMENTED"
            rec["path"] = path
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "the stand-in does not implement %s" % path)
        return grpc.unary_unary_rpc_method_handler(handle)


def handlers(protos, gate, implementations):
    """gRPC generic handlers for every method of the protos' services; implementations maps a
    service's short name ("ModalClient") to the object holding its handler methods."""
    out = []
    by_service = collections.defaultdict(dict)
    for m in protos.methods:
        impl = implementations.get(m.service_short)
        fn = getattr(impl, m.name, None) or _unimplemented(m)
        ser = m.response.SerializeToString
        de = m.request.FromString
        if m.client_streaming and not m.server_streaming:
            h = grpc.stream_unary_rpc_method_handler(_client_stream(gate, m, fn), de, ser)
        elif m.server_streaming and not m.client_streaming:
            h = grpc.unary_stream_rpc_method_handler(_server_stream(gate, m, fn), de, ser)
        elif not m.server_streaming:
            h = grpc.unary_unary_rpc_method_handler(_unary(gate, m, fn), de, ser)
        else:
            continue                                       # no bidi method is served
        by_service[m.service][m.name] = h
    for service, methods in by_service.items():
        out.append(grpc.method_handlers_generic_handler(service, methods))
    out.append(_CatchAll(gate))
    return out
