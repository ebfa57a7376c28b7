-- runbox.grpc against a real gRPC server (Python grpcio, raw-bytes handlers) and, for responses no
-- gRPC server would send, nghttpd serving hand-made frames.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local http = require "runbox.http"
local grpc = require "runbox.grpc"
local errors = require "runbox.errors"

local root = (arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local servers = dofile(root .. "/tests/helpers/servers.lua")
local PY = "/usr/bin/python3"

local dir = servers.tempdir()
local sock = dir .. "/grpc.sock"
local srv
local function channel(opts)
  srv = srv or servers.start{PY, root .. "/tests/helpers/grpc_server.py", "--port-file", "{portfile}",
                             "--parent", "{parent}", "--unix", sock}
  return grpc.channel("http://127.0.0.1:" .. srv.port, opts)
end

-- nghttpd answering every path with a file: raw frames with a chosen status (or none)
local fake = {}
local function fake_channel(trailers, opts)
  local key = table.concat(trailers, "|")
  if not fake[key] then
    local d = dir .. "/fake" .. #fake + 1
    os.execute("mkdir -p " .. servers.quote(d .. "/x"))
    local function put(name, bytes) local f = assert(io.open(d .. "/x/" .. name, "wb")); f:write(bytes); f:close() end
    put("mime.types", "application/grpc grpc\n")
    put("ok.grpc", string.pack(">I1s4", 0, "hello"))
    put("flag.grpc", string.pack(">I1s4", 1, "hello"))
    put("cut.grpc", string.pack(">I1I4", 0, 100) .. "only part")
    local argv = {PY, root .. "/tests/helpers/serve.py", "--port-file", "{portfile}", "--parent", "{parent}", "--",
                  "nghttpd", "-a", "127.0.0.1", "-d", d, "--no-tls", "--no-content-length",
                  "--mime-types-file=" .. d .. "/x/mime.types"}
    for _, t in ipairs(trailers) do argv[#argv + 1] = "--trailer=" .. t end
    argv[#argv + 1] = "{port}"
    fake[key] = servers.start(argv)
    fake[#fake + 1] = fake[key]
  end
  return grpc.channel("http://127.0.0.1:" .. fake[key].port, opts)
end

local function is_grpc(err, status)
  T.ok(errors.is(err, "grpc"), "a grpc error: " .. tostring(err))
  T.eq(err.grpc_status, status, tostring(err))
  T.eq(err.grpc_code, grpc.codes[status] or err.grpc_code)
end

T.test("unary call with bytes", function()
  local ch = channel()
  local reply, err, call = ch:unary("/test.Echo/Say", "hello \0 bytes")
  T.eq(err, nil)
  T.eq(reply, "hello \0 bytes")
  T.eq(call.status, 0)
  T.match(call.trailers["x-peer"], "127%.0%.0%.1")
end)

T.test("server streaming", function()
  local st = assert(channel():server_stream("/test.Echo/Stream", "20"))
  local got = {}
  for msg in st:messages() do got[#got + 1] = msg end
  T.eq(#got, 20)
  T.eq({got[1], got[20]}, {"msg 0", "msg 19"})
  T.eq(st.status, 0)
  T.eq(st:recv(), nil)
  local st2 <close> = assert(channel():server_stream("/test.Echo/Stream", "3"))
  T.eq({st2:recv(), st2:recv(), st2:recv()}, {"msg 0", "msg 1", "msg 2"})
  T.eq(st2:recv(), nil)
end)

T.test("metadata both ways, binary metadata", function()
  local ch = channel{metadata = {["x-client"] = "runbox"}}
  local reply, err, call = ch:unary("/test.Echo/Meta", "", {metadata = {["X-Call"] = "1", ["x-data-bin"] = "\0\1\2"}})
  T.eq(err, nil)
  T.match(reply, "x%-client=runbox")
  T.match(reply, "x%-call=1")
  T.match(reply, "x%-data%-bin=000102")
  T.match(reply, "user%-agent=runbox%-grpc")
  T.eq(call.headers["x-initial"], "yes")
  T.eq(call.trailers["x-trailing"], "done")
  T.eq(call.trailers["x-raw-bin"], "\0\1\2")
  T.raises("reserved", ch.unary, ch, "/test.Echo/Meta", "", {metadata = {te = "x"}})
end)

T.test("status from an aborted call (trailers-only), message percent-decoded", function()
  local ch = channel()
  local reply, err = ch:unary("/test.Echo/Fail", "UNAVAILABLE:backend down")
  T.eq(reply, nil)
  is_grpc(err, "UNAVAILABLE")
  T.eq(err.grpc_code, 14)
  T.eq(err.grpc_message, "backend down")
  T.match(err.message, "^UNAVAILABLE: backend down %(/test%.Echo/Fail%)$")
  local msg = "bad: 100% wrong, ünïcode\nsecond line"
  reply, err = ch:unary("/test.Echo/Fail", "INVALID_ARGUMENT:" .. msg)
  is_grpc(err, "INVALID_ARGUMENT")
  T.eq(err.grpc_message, msg)
end)

T.test("error after streamed messages", function()
  local st = assert(channel():server_stream("/test.Echo/StreamFail", ""))
  T.eq(st:recv(), "one")
  T.eq(st:recv(), "two")
  local msg, err = st:recv()
  T.eq(msg, nil)
  is_grpc(err, "INVALID_ARGUMENT")
  T.eq(err.grpc_message, "bad item 3")
  local st2 = assert(channel():server_stream("/test.Echo/StreamFail", ""))
  local e = T.raises("bad item 3", function() for _ in st2:messages() do end end)
  T.eq(e.grpc_status, "INVALID_ARGUMENT")
end)

T.test("unimplemented method, wrong number of replies", function()
  local ch = channel()
  local _, err = ch:unary("/test.Echo/Nope", "")
  is_grpc(err, "UNIMPLEMENTED")
  _, err = ch:unary("/test.Echo/Empty", "")
  is_grpc(err, "UNIMPLEMENTED")
  T.match(err.message, "no reply")
  _, err = ch:unary("/test.Echo/Two", "")
  T.match(err.message, "more than one")
end)

T.test("timeout gives DEADLINE_EXCEEDED; the header is sent", function()
  local t0 = sched.now()
  local reply, err = channel():unary("/test.Echo/Slow", "3", {timeout = 0.3})
  T.eq(reply, nil)
  is_grpc(err, "DEADLINE_EXCEEDED")
  T.ok(sched.now() - t0 < 2)
  local r, _, call = channel{timeout = 5}:unary("/test.Echo/Meta", "")
  T.match(r, "time_remaining=5")
  T.eq(call.status, 0)
end)

T.test("sched.deadline around a call cancels it; the channel still works", function()
  local ch = channel()
  local ok, err = pcall(sched.deadline, 0.2, ch.unary, ch, "/test.Echo/Slow", "3")
  T.eq(ok, false)
  T.ok(errors.is(err, "timeout"))
  T.eq(http.live(), 0)
  T.eq(ch:unary("/test.Echo/Say", "again"), "again")
end)

T.test("4 MB messages both ways", function()
  local big = string.rep("0123456789abcdef", 4 * 65536)
  local reply, err = channel():unary("/test.Echo/Say", big)
  T.eq(err, nil)
  T.ok(reply == big, "4 MB echoed")
  local st = assert(channel():server_stream("/test.Echo/StreamBig", "3 " .. 4 * 1024 * 1024))
  local n = 0
  for msg in st:messages() do n = n + 1; T.eq(#msg, 4 * 1024 * 1024) end
  T.eq(n, 3)
end)

T.test("message over max_message is refused", function()
  local _, err = channel{max_message = 1000}:unary("/test.Echo/Say", string.rep("x", 5000))
  T.match(err.message, "malformed gRPC frame")
  T.match(err.message, "5000 bytes")
end)

T.test("50 concurrent calls share one HTTP/2 connection", function()
  local ch = channel()
  local peers, tasks = {}, {}
  for i = 1, 50 do
    tasks[i] = sched.spawn(function()
      local reply, err, call = ch:unary("/test.Echo/Say", "call " .. i)
      T.eq(err, nil)
      T.eq(reply, "call " .. i)
      peers[call.trailers["x-peer"]] = true
    end)
  end
  for _, t in ipairs(tasks) do t:join() end
  local list = {}
  for p in pairs(peers) do list[#list + 1] = p end
  T.eq(#list, 1, "peers: " .. table.concat(list, " "))
end)

T.test("unix socket target", function()
  channel()
  local ch = grpc.channel("unix:" .. sock)
  T.eq(ch:unary("/test.Echo/Say", "over unix"), "over unix")
end)

T.test("refused connection gives UNAVAILABLE", function()
  local _, err = grpc.channel("http://127.0.0.1:1"):unary("/a.B/C", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "Couldn't connect")
end)

T.test("missing grpc-status, bad frames, HTTP errors, unknown codes", function()
  local ch = fake_channel{}
  local _, err = ch:unary("/x/ok.grpc", "")
  is_grpc(err, "INTERNAL")
  T.match(err.message, "without a grpc%-status")
  _, err = ch:unary("/x/flag.grpc", "")
  T.match(err.message, "malformed gRPC frame: flag byte 1 %(compressed%) without grpc%-encoding")
  _, err = ch:unary("/x/cut.grpc", "")
  T.match(err.message, "malformed gRPC frame: the stream ended inside a frame")
  _, err = ch:unary("/x/missing.grpc", "")
  is_grpc(err, "UNIMPLEMENTED")
  T.match(err.message, "HTTP status 404")
  local odd = fake_channel{"grpc-status: 99", "grpc-message: odd%20code", "x-extra: 1"}
  local st = assert(odd:server_stream("/x/ok.grpc", ""))
  T.eq(st:recv(), "hello")
  local msg
  msg, err = st:recv()
  T.eq(msg, nil)
  T.eq({err.grpc_code, err.grpc_status, err.grpc_message}, {99, "UNKNOWN(99)", "odd code"})
  T.eq(err.metadata["x-extra"], "1")
end)

T.test("status names and HTTP status mapping", function()
  T.eq(grpc.status_name(0), "OK")
  T.eq(grpc.status_name(14), "UNAVAILABLE")
  T.eq(grpc.status_name(99), "UNKNOWN(99)")
  T.eq(grpc.status_name(grpc.code_for_http_status(503)), "UNAVAILABLE")
  T.eq(grpc.status_name(grpc.code_for_http_status(401)), "UNAUTHENTICATED")
  T.eq(grpc.status_name(grpc.code_for_http_status(500)), "UNKNOWN")
end)

T.test("messages encoded and decoded with runbox.pb schemas", function()
  local pb = require "runbox.pb"
  local S = pb.schema{Req = {{1, "name", "string"}, {2, "n", "int32"}}}
  local reply, err = channel():unary("/test.Echo/Say", {name = "x", n = 5}, {request = S.Req, response = S.Req})
  T.eq(err, nil)
  T.eq(reply.name, "x")
  T.eq(reply.n, 5)
  local st = assert(channel():server_stream("/test.Echo/Stream", "2", {response = S.Req}))
  local msg
  msg, err = st:recv()   -- "msg 0" is not a valid Req: field 13 with wire type 5, truncated
  if msg == nil then is_grpc(err, "INTERNAL"); T.match(err.message, "decode") end
end)

T.test("bad arguments raise", function()
  local ch = channel()
  T.raises("method path", ch.unary, ch, "Say", "")
  T.raises("request must be a string", ch.unary, ch, "/a.B/C", {})
  T.raises("unknown option", ch.unary, ch, "/a.B/C", "", {timout = 1})
  T.raises("target must start with", grpc.channel, "127.0.0.1:50051")
end)

local stop <close> = setmetatable({}, {__close = function()
  if srv then srv:stop() end
  for _, s in ipairs(fake) do s:stop() end
  os.execute("rm -rf " .. servers.quote(dir))
end})
T.run()
