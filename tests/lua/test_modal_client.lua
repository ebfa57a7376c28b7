-- The Modal client against the stand-in Modal server (tests/helpers/modal_standin): every
-- operation, and every fault the stand-in can inject.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local fs = require "runbox.fs"
local http = require "runbox.http"
local json = require "runbox.json"
local proc = require "runbox.proc"
local util = require "runbox.util"
local grpc = require "runbox.grpc"
local net = require "runbox.net"
local modal = require "runbox.modal"
local mclient = require "runbox.modal.client"

local ROOT = os.getenv("RUNBOX_SOURCE") or (arg and arg[0] and arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."

---------------------------------------------------------------------------------------------------
-- the stand-in

-- Starts the stand-in with tests/helpers/modal_standin/start.lua; until that exists, directly.
local function start_standin(state_dir)
  local helper = ROOT .. "/tests/helpers/modal_standin/start.lua"
  if fs.exists(helper) then
    local m = dofile(helper)
    local start = type(m) == "function" and m or m.start
    return start{state_dir = state_dir}
  end
  local p = assert(proc.spawn{"/usr/bin/python3", ROOT .. "/tests/helpers/modal_standin/server.py", "--state", state_dir,
                              stderr = "inherit"})
  local line = assert(p:lines()(), "the stand-in printed nothing")
  local urls = assert(json.decode(line))
  local s = {grpc_url = urls.grpc_url, http_url = urls.http_url, state_dir = state_dir}
  function s.admin(fault)
    local resp = fault and assert(http.post(s.http_url .. "/admin/faults", json.encode(fault)))
                       or assert(http.request{method = "DELETE", url = s.http_url .. "/admin/faults"})
    assert(resp.status < 300, resp.body)
  end
  function s.state() return assert(json.decode(assert(http.get(s.http_url .. "/admin/state")).body)) end
  function s.stop()
    if s.stopped then return end
    s.stopped = true
    p:kill(15); p:wait(); p:close()
  end
  return s
end

local S            -- the running stand-in
local HOME         -- an empty home: no ~/.modal.toml of the machine running the tests

local function server()
  if not S then
    HOME = assert(fs.temp_dir("modal-client-home"))
    S = start_standin(HOME .. "/state")
  end
  return S
end

local function env(extra)
  local e = {MODAL_SERVER_URL = server().grpc_url, MODAL_TOKEN_ID = "ak-test", MODAL_TOKEN_SECRET = "as-test"}
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function new_client(opts)
  opts = opts or {}
  local o = {env = env(opts.env), home = HOME, app = opts.app or "client-tests", timeout = opts.timeout}
  return assert(modal.client(o))
end

local function fault(f) server().admin(f) end
local function clear() server().admin(nil) end

-- The recorded calls of method since index `from`.
local function calls(method, from)
  local out = {}
  for i, c in ipairs(server().state().calls) do
    if i > (from or 0) and c.method == method then out[#out + 1] = c end
  end
  return out
end
local function ncalls() return #server().state().calls end

local IMAGE     -- one image for the sandbox tests
local function image(c)
  if not IMAGE then IMAGE = assert(c:image{registry = "debian:bookworm-slim"}) end
  return IMAGE
end

local function sandbox(c, spec)
  spec = spec or {}
  spec.image = spec.image or image(c)
  spec.timeout = spec.timeout or 60
  return assert(c:sandbox_create(spec))
end

---------------------------------------------------------------------------------------------------
-- control plane

T.test("app get-or-create, hello, metadata of every call", function()
  local c = new_client()
  local from = ncalls()
  local app = assert(c:app("metadata-app"))
  T.match(app.id, "^ap%-")
  local again = assert(new_client():app("metadata-app"))
  T.eq(again.id, app.id)
  assert(c:hello())
  local rec = calls("AppGetOrCreate", from)[1]
  local md = rec.metadata
  T.eq(md["x-modal-client-type"], "1")
  T.eq(md["x-modal-client-version"], mclient.CLIENT_VERSION)
  T.eq(md["x-modal-token-id"], "ak-test")
  T.eq(md["x-modal-token-secret"], "<set>")
  T.eq(md["x-retry-attempt"], "0")
  T.match(md["x-idempotency-key"], "^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$")
  T.eq(md["x-retry-delay"], nil)
end)

T.test("a transient error is retried with the same idempotency key", function()
  local c = new_client()
  fault{method = "AppGetOrCreate", kind = "unavailable", count = 2}
  local from = ncalls()
  local t0 = sched.now()
  assert(c:app("retried-app"))
  local recs = calls("AppGetOrCreate", from)
  T.eq(#recs, 3)
  T.eq({recs[1].code, recs[2].code, recs[3].code}, {"UNAVAILABLE", "UNAVAILABLE", "OK"})
  local key = recs[1].metadata["x-idempotency-key"]
  for i, r in ipairs(recs) do
    T.eq(r.metadata["x-idempotency-key"], key)
    T.eq(r.metadata["x-retry-attempt"], tostring(i - 1))
  end
  T.ok(tonumber(recs[3].metadata["x-retry-delay"]) >= 0.29, "x-retry-delay after 0.1 + 0.2 s")
  T.ok(sched.now() - t0 >= 0.29, "backoff 100 ms, then 200 ms")
  -- the next logical call has a key of its own
  from = ncalls()
  assert(new_client():app("retried-app"))
  T.ne(calls("AppGetOrCreate", from)[1].metadata["x-idempotency-key"], key)
  clear()
end)

T.test("retries stop after 3; other codes are not retried", function()
  local c = new_client()
  fault{method = "AppGetOrCreate", kind = "unavailable", count = 10}
  local from = ncalls()
  local app, err = c:app("never-app")
  T.eq(app, nil)
  T.eq(err.code, "modal")
  T.eq(err.grpc_status, "UNAVAILABLE")
  T.match(err.message, "^Modal AppGetOrCreate failed: UNAVAILABLE: .*gave up after 4 attempts")
  T.eq(#calls("AppGetOrCreate", from), 4)
  clear()
  fault{method = "AppGetOrCreate", kind = "status", code = "INVALID_ARGUMENT", count = 1}
  from = ncalls()
  app, err = c:app("invalid-app")
  T.eq(err.grpc_status, "INVALID_ARGUMENT")
  T.eq(err.reason, "invalid")
  T.eq(#calls("AppGetOrCreate", from), 1)
  clear()
end)

T.test("a slow answer: waited for, or retried after the attempt timeout", function()
  fault{method = "AppGetOrCreate", kind = "slow", seconds = 0.6, count = 1}
  local t0 = sched.now()
  assert(new_client():app("slow-app"))
  T.ok(sched.now() - t0 >= 0.55)
  fault{method = "AppGetOrCreate", kind = "slow", seconds = 2, count = 1}
  local from = ncalls()
  t0 = sched.now()
  assert(new_client{timeout = 0.3}:app("slow-app"))
  T.ok(sched.now() - t0 < 1.5, "the retry did not wait for the slow attempt")
  local recs = calls("AppGetOrCreate", from)
  T.eq(recs[1].metadata["x-idempotency-key"], recs[#recs].metadata["x-idempotency-key"])
  T.eq(recs[#recs].metadata["x-retry-attempt"], "1")
  clear()
end)

T.test("bad credentials, an unreachable server, a server that closes the connection", function()
  local c = assert(modal.client{env = env{MODAL_TOKEN_SECRET = "as-wrong"}, home = HOME})
  local _, err = c:app("x")
  T.eq(err.grpc_status, "UNAUTHENTICATED")
  T.eq(err.reason, "auth")
  T.match(err.message, "check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new`")
  c = assert(modal.client{env = env{MODAL_SERVER_URL = "http://127.0.0.1:1"}, home = HOME})
  _, err = c:app("x")
  T.eq(err.grpc_status, "UNAVAILABLE")
  T.match(err.message, "connection to the server failed or was closed")
  T.match(err.message, "gave up after 4 attempts")
  -- a listener that accepts and hangs up at once
  local l = assert(net.listen{host = "127.0.0.1", port = 0})
  local acceptor = sched.spawn(function()
    while true do
      local conn = l:accept()
      if not conn then return end
      conn:close()
    end
  end)
  c = assert(modal.client{env = env{MODAL_SERVER_URL = "http://127.0.0.1:" .. l.port}, home = HOME})
  _, err = c:app("x")
  T.ok(err and (err.grpc_status == "UNAVAILABLE" or err.grpc_status == "INTERNAL"), err and err.message)
  T.match(err.message, "^Modal AppGetOrCreate failed: ")
  T.match(err.message, "gave up after 4 attempts")
  acceptor:cancel()
  l:close()
end)

T.test("an unknown status code is named as such", function()
  local err = mclient.error("SandboxCreate", grpc.error(99, "odd", "/modal.client.ModalClient/SandboxCreate"))
  T.eq(err.reason, "unknown_status")
  T.match(err.message, "^Modal SandboxCreate failed: the server answered with status code 99, which gRPC does not define %(odd%)")
end)

T.test("the auth token: fetched once, decoded, cached", function()
  local c = new_client()
  local from = ncalls()
  local tok = assert(c:auth_token())
  T.eq(select(2, tok:gsub("%.", "")), 2)
  T.ok(c.conn.token_exp > util.time() + 60)
  T.ok(c.conn.token_refresh_at > util.time() and c.conn.token_refresh_at < c.conn.token_exp)
  T.eq(assert(c:auth_token()), tok)
  T.eq(#calls("AuthTokenGet", from), 1)
  -- a due refresh fetches a new one
  c.conn.token_refresh_at = 0
  assert(c:auth_token())
  T.eq(#calls("AuthTokenGet", from), 2)
end)

---------------------------------------------------------------------------------------------------
-- images

T.test("image: registry tag + command layers, build log live, cached", function()
  local c = new_client()
  local logs = {}
  local img = assert(c:image{registry = "debian:bookworm-slim",
                             layers = {{"RUN echo layer-one"}, {"RUN echo layer-two; echo to-stderr >&2"}},
                             on_log = function(text) logs[#logs + 1] = text end})
  T.match(img.id, "^im%-")
  T.eq(#img.layers, 3)
  local all = table.concat(logs)
  T.match(all, "layer%-one")
  T.match(all, "layer%-two")
  T.match(all, "to%-stderr")
  local st = server().state()
  local found
  for _, im in ipairs(st.images) do if im.id == img.id or im.image_id == img.id then found = im end end
  T.ok(found, "the stand-in knows the image")
  -- the same definition: the same id, no new build
  logs = {}
  local again = assert(c:image{registry = "debian:bookworm-slim",
                               layers = {{"RUN echo layer-one"}, {"RUN echo layer-two; echo to-stderr >&2"}},
                               on_log = function(text) logs[#logs + 1] = text end})
  T.eq(again.id, img.id)
end)

T.test("image: a cut build-log stream resumes without losing or repeating lines", function()
  local c = new_client()
  fault{method = "ImageJoinStreaming", kind = "cut_stream", after = 2, count = 2}
  local logs = {}
  local script = "for i in $(seq 1 30); do echo line-$i; done"
  assert(c:image{registry = "debian:bookworm-slim", commands = {"RUN " .. script}, force_build = true,
                 on_log = function(text) logs[#logs + 1] = text end})
  local all = table.concat(logs)
  for i = 1, 30 do
    local _, n = all:gsub("line%-" .. i .. "\n", "")
    T.eq(n, 1, "line-" .. i)
  end
  local recs = calls("ImageJoinStreaming")
  T.ok(#recs >= 2, "the stream was reopened")
  clear()
end)

T.test("image: a failing build is an error carrying its log", function()
  local c = new_client()
  local img, err = c:image{registry = "debian:bookworm-slim",
                           commands = {"RUN echo about-to-fail; exit 7"}}
  T.eq(img, nil)
  T.eq(err.reason, "build_failed")
  T.match(err.message, "^Modal image build failed %(failure, layer 2: FROM base; RUN echo about%-to%-fail; exit 7%)")
  T.match(err.message, "about%-to%-fail")
  T.match(err.log, "about%-to%-fail")
end)

---------------------------------------------------------------------------------------------------
-- secrets and volumes

T.test("secrets: named (created, looked up, missing), ephemeral", function()
  local c = new_client()
  local s = assert(c:secret_create("client-test-secret", {GREETING = "hello"}, {overwrite = true}))
  T.match(s.id, "^st%-")
  local found = assert(c:secret_from_name("client-test-secret", {required_keys = {"GREETING"}}))
  T.eq(found.id, s.id)
  local _, err = c:secret_from_name("client-test-secret", {required_keys = {"NOPE"}})
  T.eq(err.reason, "missing_key")
  _, err = c:secret_from_name("openai-api-keys")
  T.eq(err.reason, "not_found")
  T.match(err.message, "Modal secret 'openai%-api%-keys' was not found in the default environment: run `runbox setup`")
  _, err = c:secret_from_name("some-other")
  T.match(err.message, "modal secret create some%-other")
  local e = assert(c:secret_from_map({TOKEN = "t0ps3cret"}))
  T.match(e.id, "^st%-")
  local st = server().state()
  T.eq(st.secrets["client-test-secret"], {"GREETING"})
  T.ok(not json.encode(st):find("t0ps3cret"), "values never show")
end)

T.test("volumes: upload (blocks, dedup), list, download, remove, commit", function()
  local c = new_client()
  local dir = assert(fs.temp_dir("modal-vol"))
  fs.mkdir_p(dir .. "/up/sub")
  fs.write(dir .. "/up/a.txt", "alpha\n")
  fs.write(dir .. "/up/sub/empty", "")
  -- two blocks and a bit, the second ending in zeros (stored without them)
  local big = ("0123456789abcdef"):rep(8 * 1024 * 1024 / 16) .. ("x"):rep(1000) .. ("\0"):rep(5000) .. "end"
  fs.write(dir .. "/up/sub/big.bin", big)
  local zeros = "abc" .. ("\0"):rep(10000)      -- ends in zeros: the stored block is "abc"
  fs.write(dir .. "/up/zeros.bin", zeros)
  local _, err = c:volume("client-vol-missing")
  T.eq(err.reason, "not_found")
  local vol = assert(c:volume("client-vol", {create = true}))
  T.match(vol.id, "^vo%-")
  T.eq(vol.version, 2)
  local progress = 0
  local r = assert(vol:put(dir .. "/up", "run1", {on_progress = function(n) progress = progress + n end}))
  T.eq(r.files, 4)
  T.eq(progress, #big + 6 + #zeros)
  local list = assert(vol:list("run1", {recursive = true}))
  local names = {}
  for _, e in ipairs(list) do names[e.path] = e.type .. ":" .. e.size end
  T.eq(names["run1/a.txt"], "file:6")
  T.eq(names["run1/sub/big.bin"], "file:" .. #big)
  T.match(names["run1/sub"], "^dir:")
  -- uploading the same bytes again sends no block
  local from = ncalls()
  assert(vol:put(dir .. "/up/sub/big.bin", "copy/big.bin"))
  T.eq(#calls("VolumePutFiles2", from), 1)
  -- download a folder: its contents, no extra level
  assert(vol:get("run1", dir .. "/down"))
  T.eq(fs.read(dir .. "/down/a.txt"), "alpha\n")
  T.eq(fs.read(dir .. "/down/sub/big.bin"), big)
  T.eq(fs.read(dir .. "/down/sub/empty"), "")
  T.eq(fs.read(dir .. "/down/zeros.bin"), zeros)
  T.eq(assert(vol:read("copy/big.bin")), big)
  _, err = vol:list("nope")
  T.eq(err.reason, "not_found")
  assert(vol:put_bytes("v2", "run1/a.txt"))
  T.eq(vol:read("run1/a.txt"), "v2")
  assert(vol:remove("run1", {recursive = true}))
  _, err = vol:list("run1")
  T.eq(err.reason, "not_found")
  assert(vol:commit())
  fs.remove_tree(dir)
end)

---------------------------------------------------------------------------------------------------
-- sandboxes

T.test("sandbox: create with resources, workdir, secrets, env, volume, tags; exec", function()
  local c = new_client()
  local sec = assert(c:secret_create("client-sb-secret", {FROM_SECRET = "named"}, {overwrite = true}))
  local vol = assert(c:volume("client-sb-vol", {create = true}))
  assert(vol:put_bytes("in the volume\n", "data.txt"))
  local sb = sandbox(c, {cpu = 1.5, memory = 768, timeout = 120, workdir = "/work", secrets = {sec},
                         env = {FROM_ENV = "ephemeral"}, volumes = {["/mnt/vol"] = vol},
                         tags = {batch = "b-create", run = "r1"}, network = false})
  T.match(sb.id, "^sb%-")
  T.match(assert(sb:task_id()), "^ta%-")
  local r = assert(sb:run({"sh", "-c", 'pwd; echo "$FROM_SECRET $FROM_ENV $EXTRA"; cat /mnt/vol/data.txt; echo oops >&2; exit 3'},
                          {env = {EXTRA = "exec-env"}}))
  T.eq(r.code, 3)
  T.eq(r.how, "exit")
  T.eq(r.stdout, "/work\nnamed ephemeral exec-env\nin the volume\n")
  T.eq(r.stderr, "oops\n")
  local info
  for _, s in ipairs(server().state().sandboxes) do if s.id == sb.id then info = s end end
  T.eq(info.tags, {batch = "b-create", run = "r1"})
  T.eq(info.workdir, "/work")
  T.eq(info.timeout_secs, 120)
  T.eq(info.resources.milli_cpu, 1500)
  T.eq(info.resources.memory_mb, 768)
  assert(sb:terminate())
end)

T.test("exec: stdin piped, workdir, timeout, callbacks, a missing command", function()
  local c = new_client()
  local sb = sandbox(c)
  local p = assert(sb:exec({"tr", "a-z", "A-Z"}, {stdin = "pipe"}))
  assert(p:write("shout "))
  assert(p:write(("x"):rep(3 * 1024 * 1024)))
  assert(p:close_stdin())
  local out = assert(p:read_all())
  T.eq(out, "SHOUT " .. ("X"):rep(3 * 1024 * 1024))
  T.eq({p:wait()}, {0, "exit"})
  -- lines, and a workdir
  p = assert(sb:exec({"sh", "-c", "pwd; printf 'a\\nb'"}, {workdir = "/tmp"}))
  local lines = {}
  for l in p:lines() do lines[#lines + 1] = l end
  T.eq(lines, {"/tmp", "a", "b"})
  -- callbacks
  local got_out, got_err = {}, {}
  p = assert(sb:exec({"sh", "-c", "echo one; echo two >&2; echo three"},
                     {on_stdout = function(s) got_out[#got_out + 1] = s end, on_stderr = function(s) got_err[#got_err + 1] = s end}))
  T.eq({p:wait()}, {0, "exit"})
  T.eq(table.concat(got_out), "one\nthree\n")
  T.eq(table.concat(got_err), "two\n")
  -- a time limit
  local t0 = sched.now()
  p = assert(sb:exec({"sleep", "30"}, {timeout = 1}))
  local code, how = p:wait()
  T.eq(how, "timeout")
  T.eq(code, 137)
  T.ok(sched.now() - t0 < 10)
  -- a command that does not exist
  local r, err = sb:run({"no-such-command-xyz"})
  if r then
    T.ne(r.code, 0)
    T.match(r.stderr, "no%-such%-command%-xyz")
  else
    T.match(err.message, "no%-such%-command%-xyz")
  end
  assert(sb:terminate())
end)

T.test("router calls survive transient errors; output can be read after the exit", function()
  local c = new_client()
  local sb = sandbox(c)
  fault{method = "SandboxGetTaskId", kind = "status", code = "INTERNAL", count = 1}
  fault{method = "TaskGetCommandRouterAccess", kind = "unavailable", count = 1}
  fault{method = "TaskExecStart", kind = "unavailable", count = 2}
  fault{method = "TaskExecStdinWrite", kind = "unavailable", count = 2}
  fault{method = "TaskExecWait", kind = "unavailable", count = 1}
  fault{method = "TaskExecStdioRead", kind = "unavailable", count = 2}
  local from = ncalls()
  local p = assert(sb:exec({"sh", "-c", "cat; echo done >&2"}, {stdin = "piped in\n"}))
  T.eq({p:wait()}, {0, "exit"})
  T.eq(p:read_all("stdout"), "piped in\n")
  T.eq(p:read_all("stderr"), "done\n")
  -- TaskExecStart was retried with the same exec id: one command ran
  local starts = calls("TaskExecStart", from)
  T.eq(#starts, 3)
  for _, s in ipairs(server().state().sandboxes) do
    if s.id == sb.id then T.eq(#s.execs, 1) end
  end
  clear()
  assert(sb:terminate())
end)

T.test("exec output arrives while the command runs", function()
  local c = new_client()
  local sb = sandbox(c)
  local seen = {}
  local p = assert(sb:exec({"sh", "-c", "echo first; sleep 1; echo second"},
                           {on_stdout = function(s) seen[#seen + 1] = {s, sched.now()} end}))
  T.eq({p:wait()}, {0, "exit"})
  local ended = sched.now()
  T.eq(seen[1][1], "first\n")
  T.ok(ended - seen[1][2] >= 0.7, "the first line came a second before the end")
  -- a read interrupted by a deadline loses nothing
  p = assert(sb:exec({"sh", "-c", "echo a; sleep 1; echo b"}))
  T.eq(p:read(), "a\n")
  local ok, err = sched.timeout(0.3, p.read, p)
  T.eq(ok, nil)
  T.eq(err.code, "timeout")
  T.eq(p:read(), "b\n")
  T.eq(p:read(), nil)
  assert(sb:terminate())
end)

T.test("exec: stdout stream cut twice, resumed without loss or duplication", function()
  local c = new_client()
  local sb = sandbox(c)
  fault{method = "TaskExecStdioRead", kind = "cut_stream", after = 3, count = 2}
  local from = ncalls()
  local r = assert(sb:run({"seq", "1", "200000"}))
  local want = {}
  for i = 1, 200000 do want[i] = tostring(i) end
  T.eq(#r.stdout, #(table.concat(want, "\n") .. "\n"))
  T.ok(r.stdout == table.concat(want, "\n") .. "\n", "the output is whole and in order")
  local cut = 0
  for _, rec in ipairs(calls("TaskExecStdioRead", from)) do if rec.code == "UNAVAILABLE" then cut = cut + 1 end end
  T.eq(cut, 2)
  clear()
  assert(sb:terminate())
end)

T.test("router: UNAUTHENTICATED gets a fresh JWT and the call is retried", function()
  local c = new_client()
  local sb = sandbox(c)
  assert(sb:run({"true"}))
  local from = ncalls()
  fault{method = "TaskExecStart", kind = "unauthenticated", count = 1}
  local r = assert(sb:run({"echo", "after refresh"}))
  T.eq(r.stdout, "after refresh\n")
  T.eq(#calls("TaskGetCommandRouterAccess", from), 1)
  local recs = calls("TaskExecStart", from)
  T.eq(recs[1].code, "UNAUTHENTICATED")
  T.eq(recs[2].code, "OK")
  T.eq(recs[2].metadata.authorization, "<set>")
  -- and on a stream
  from = ncalls()
  fault{method = "TaskExecStdioRead", kind = "unauthenticated", count = 1}
  r = assert(sb:run({"echo", "stream refresh"}))
  T.eq(r.stdout, "stream refresh\n")
  T.eq(#calls("TaskGetCommandRouterAccess", from), 1)
  clear()
  assert(sb:terminate())
end)

T.test("rate limit: RESOURCE_EXHAUSTED with a retry policy backs off, uncounted", function()
  local c = new_client()
  image(c)
  fault{method = "SandboxCreate", kind = "rate_limit", per_second = 3}
  local from = ncalls()
  local t0 = sched.now()
  local tasks = {}
  for i = 1, 8 do tasks[i] = sched.spawn(function() return sandbox(c, {tags = {batch = "rate"}}) end) end
  local sbs = {}
  for i, t in ipairs(tasks) do sbs[i] = t:join() end
  T.ok(sched.now() - t0 >= 1, "creations were spread over time")
  local refused, throttled_retry = 0, false
  for _, rec in ipairs(calls("SandboxCreate", from)) do
    if rec.code == "RESOURCE_EXHAUSTED" then refused = refused + 1 end
    if tonumber(rec.metadata["x-throttle-retry-attempt"] or "0") > 0 then throttled_retry = true end
  end
  T.ok(refused > 0, "some creations were refused")
  T.ok(throttled_retry, "x-throttle-retry-attempt counted the throttled retries")
  -- MODAL_MAX_THROTTLE_WAIT=0 turns server-directed retries off
  local strict = new_client{env = {MODAL_MAX_THROTTLE_WAIT = "0"}}
  local failed = 0
  tasks = {}
  for i = 1, 6 do tasks[i] = sched.spawn(function() return strict:sandbox_create{image = image(c), timeout = 30} end) end
  for _, t in ipairs(tasks) do
    local _, sb, err = t:wait()
    if sb then sbs[#sbs + 1] = sb else failed = failed + 1; T.eq(err.grpc_status, "RESOURCE_EXHAUSTED") end
  end
  T.ok(failed > 0)
  clear()
  for _, sb in ipairs(sbs) do assert(sb:terminate()) end
end)

T.test("list by tags, poll, wait, terminate", function()
  local c = new_client()
  local a = sandbox(c, {tags = {batch = "list-a", run = "1"}})
  local b = sandbox(c, {tags = {batch = "list-b", run = "1"}})
  local found = assert(c:sandbox_list{tags = {batch = "list-a"}})
  T.eq(#found, 1)
  T.eq(found[1].id, a.id)
  T.eq(found[1].tags, {batch = "list-a", run = "1"})
  T.eq(#assert(c:sandbox_list{tags = {run = "1"}}) >= 2, true)
  T.eq(a:poll(), nil)
  local _, err = a:wait{timeout = 0.3}
  T.eq(err.code, "timeout")
  assert(c:sandbox_terminate(b.id))
  local res = assert(b:wait())
  T.eq(res.status, "terminated")
  T.eq(res.code, 137)
  T.eq(#assert(c:sandbox_list{tags = {batch = "list-b"}}), 0)
  res = assert(a:terminate{wait = true})
  T.eq(res.status, "terminated")
  local _, exerr = a:exec({"true"})
  T.ok(exerr, "no exec in a terminated sandbox")
  local from_id = assert(c:sandbox_from_id(a.id))
  T.eq(from_id:poll().status, "terminated")
end)

T.test("a sandbox that dies mid-run: exec and wait report it", function()
  local c = new_client()
  fault{kind = "sandbox_dies", after = 1}
  local sb = sandbox(c)
  local p = assert(sb:exec({"sleep", "30"}))
  local t0 = sched.now()
  local code, how = p:wait()
  T.ok(sched.now() - t0 < 10)
  if code then T.ne(code, 0, how) else T.match(how.message, "^Modal command router TaskExecWait failed") end
  local res = assert(sb:wait())
  T.ne(res.status, "success")
  T.ne(res.code, 0)
  local _, err = sb:run({"true"})
  T.ok(err, "no exec in a dead sandbox")
  clear()
end)

T.test("many sandboxes at once from one process", function()
  local c = new_client()
  image(c)
  local tasks = {}
  for i = 1, 12 do
    tasks[i] = sched.spawn(function()
      local sb = sandbox(c, {tags = {batch = "many"}})
      local r = assert(sb:run({"sh", "-c", "head -c 200000 /dev/zero | tr '\\0' 'y'; echo; echo " .. i}))
      assert(sb:terminate())
      return #r.stdout, r.stdout:match("(%d+)\n$")
    end)
  end
  for i, t in ipairs(tasks) do
    local n, tag = t:join()
    T.eq(n, 200001 + #tostring(i) + 1)
    T.eq(tag, tostring(i))
  end
end)

T.test("nothing is left running", function()
  local c = new_client()
  for _, s in ipairs(server().state().sandboxes) do
    if s.alive then assert(c:sandbox_terminate(s.id)) end
  end
  sched.sleep(0.2)
  for _, s in ipairs(server().state().sandboxes) do T.eq(s.alive, false, s.id) end
end)

-- the stand-in stops and the scratch folder goes also when a test failed (T.run exits then)
local ok, err = pcall(T.run)
if S then S.stop() end
if HOME then fs.remove_tree(HOME) end
if not ok then error(err, 0) end
