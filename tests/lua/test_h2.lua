-- runbox.h2 (HTTP/2 on nghttp2) under runbox.grpc: many multiplexed streams, flow control that keeps
-- memory bounded for slow readers, and every way a stream or a connection can fail. Servers: the
-- Python gRPC test server, nghttpd (TLS, uploads), and small HTTP/2 servers written here on
-- runbox.net that send hand-made frames (resets, GOAWAY, closed connections, stream limits).
local T = require "runbox.testing"
local sched = require "runbox.sched"
local net = require "runbox.net"
local fs = require "runbox.fs"
local h2 = require "runbox.h2"
local grpc = require "runbox.grpc"
local errors = require "runbox.errors"

local root = (arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local servers = dofile(root .. "/tests/helpers/servers.lua")
local PY = "/usr/bin/python3"
local dir = servers.tempdir()

local pysrv
local function grpc_port()
  pysrv = pysrv or servers.start{PY, root .. "/tests/helpers/grpc_server.py", "--port-file", "{portfile}",
                                 "--parent", "{parent}"}
  return pysrv.port
end

local function is_grpc(err, status)
  T.ok(errors.is(err, "grpc"), "a grpc error: " .. tostring(err))
  T.eq(err.grpc_status, status, tostring(err))
end

local function rss_kib()
  return tonumber(assert(fs.read("/proc/self/status")):match("VmRSS:%s*(%d+)"))
end

---------------------------------------------------------------------------------------------------
-- a hand-made HTTP/2 server: handler(conn, id) is called for each request's HEADERS

local DATA, HEADERS, RST, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
local CODES = {NO_ERROR = 0, INTERNAL_ERROR = 2, REFUSED_STREAM = 7, CANCEL = 8, ENHANCE_YOUR_CALM = 11}

local function frame(typ, flags, id, payload)
  return string.pack(">I3BBI4", #payload, typ, flags, id) .. payload
end

-- HPACK: ":status: 200" (static index 8), then literals without indexing (short strings only).
local function block(list, status)
  local out = {status and "\x88" or ""}
  for i = 1, #list, 2 do
    out[#out + 1] = "\0" .. string.char(#list[i]) .. list[i] .. string.char(#list[i + 1]) .. list[i + 1]
  end
  return table.concat(out)
end

local Conn = {}
Conn.__index = Conn
function Conn:send(typ, flags, id, payload) if not self.sock:closed() then self.sock:write(frame(typ, flags, id, payload)) end end
function Conn:headers(id) self:send(HEADERS, 4, id, block({"content-type", "application/grpc"}, true)) end
function Conn:message(id, msg) self:send(DATA, 0, id, string.pack(">I1s4", 0, msg)) end
function Conn:status(id, code) self:send(HEADERS, 5, id, block({"grpc-status", tostring(code or 0)})) end
function Conn:rst(id, code) self:send(RST, 0, id, string.pack(">I4", CODES[code])) end
function Conn:goaway(last, code, text) self:send(GOAWAY, 0, 0, string.pack(">I4I4", last, CODES[code]) .. (text or "")) end
function Conn:reply(id, msg) self:headers(id); self:message(id, msg); self:status(id, 0) end
function Conn:close() self.sock:close() end

-- settings: extra SETTINGS entries {{id, value}}. srv.conns counts connections, srv.events lists
-- {"rst", conn number, stream id, code} as they arrive.
local function h2server(handler, settings)
  local l = assert(net.listen{host = "127.0.0.1", port = 0})
  local srv = {port = l.port, conns = 0, events = {}, streams = 0}
  local function serve(sock, n)
    local conn = setmetatable({sock = sock, n = n, srv = srv}, Conn)
    if not sock:read_exactly(24) then return end
    local iv = {}
    for _, s in ipairs(settings or {}) do iv[#iv + 1] = string.pack(">I2I4", s[1], s[2]) end
    conn:send(SETTINGS, 0, 0, table.concat(iv))
    while not sock:closed() do
      local hdr = sock:read_exactly(9)
      if not hdr then return end
      local len, typ, flags, id = string.unpack(">I3BBI4", hdr)
      local payload = len > 0 and sock:read_exactly(len) or ""
      if not payload then return end
      if typ == SETTINGS and flags & 1 == 0 then conn:send(SETTINGS, 1, 0, "")
      elseif typ == PING and flags & 1 == 0 then conn:send(PING, 1, 0, payload)
      elseif typ == RST then srv.events[#srv.events + 1] = {"rst", n, id, string.unpack(">I4", payload)}
      elseif typ == HEADERS then
        srv.streams = srv.streams + 1
        handler(conn, id)
      end
    end
  end
  srv.task = sched.spawn(function()
    while true do
      local sock = l:accept()
      if not sock then return end
      srv.conns = srv.conns + 1
      local n = srv.conns
      sched.spawn(function() pcall(serve, sock, n); sock:close() end)
    end
  end)
  function srv.stop() l:close() end
  function srv.rsts(id)
    local out = {}
    for _, e in ipairs(srv.events) do if e[1] == "rst" and (not id or e[3] == id) then out[#out + 1] = e end end
    return out
  end
  return srv
end

local function wait_until(cond, seconds)
  local t0 = sched.now()
  while not cond() do
    if sched.now() - t0 > (seconds or 5) then return false end
    sched.sleep(0.01)
  end
  return true
end

---------------------------------------------------------------------------------------------------
-- many streams, flow control

T.test("200 server streams of 16 x 64 KiB on one channel: no call fails", function()
  local ch = grpc.channel("http://127.0.0.1:" .. grpc_port())
  local ok, failures = 0, {}
  sched.scope(function(s)
    for _ = 1, 200 do
      s:spawn(function()
        local call, err = ch:server_stream("/test.Echo/StreamBig", "16 65536")
        if not call then failures[#failures + 1] = err.message; return end
        local n = 0
        for msg in call:messages() do
          n = n + 1
          if #msg ~= 65536 then failures[#failures + 1] = "short message"; return end
        end
        if n == 16 and call.status == 0 then ok = ok + 1 else failures[#failures + 1] = "got " .. n end
      end)
    end
  end)
  T.eq(failures, {})
  T.eq(ok, 200)
  -- the calls shared connections: at most the 100 streams nghttp2 allows before the server's
  -- SETTINGS arrive went on the first one
  local conns = h2.connections(ch.h2)
  T.ok(#conns <= 2, #conns .. " connections")
end, {timeout = 60})

T.test("100 slow readers: each stream buffers at most its window, memory stays bounded", function()
  local ch = grpc.channel("http://127.0.0.1:" .. grpc_port())
  T.eq(ch:unary("/test.Echo/Say", "warm up"), "warm up")
  collectgarbage(); collectgarbage()
  local before = rss_kib()
  local calls, done = {}, 0
  sched.scope(function(s)
    for i = 1, 100 do
      s:spawn(function()
        local call = assert(ch:server_stream("/test.Echo/StreamBig", "32 65536"))   -- 2 MiB each
        calls[i] = call
        T.eq(#assert(call:recv()), 65536)
        sched.sleep(1.0)          -- meanwhile the server would send all 200 MiB if it could
        local n = 1
        for _ in call:messages() do n = n + 1 end
        T.eq(n, 32)
        done = done + 1
      end)
    end
    sched.sleep(0.8)
    local buffered = 0
    for _, call in pairs(calls) do
      local st = call.resp:stats()
      T.ok(st.buffered <= 1024 * 1024, "a stream buffered " .. st.buffered .. " bytes")
      buffered = buffered + st.buffered
    end
    local grown = rss_kib() - before
    T.ok(buffered <= 16 * 1024 * 1024, ("%d bytes buffered in all"):format(buffered))
    T.ok(grown < 64 * 1024, ("VmRSS grew by %d KiB while readers slept"):format(grown))
  end)
  T.eq(done, 100)
end, {timeout = 60})

T.test("a streamed request body (3 MiB) goes out under flow control and comes back", function()
  local port = servers.start{PY, root .. "/tests/helpers/serve.py", "--port-file", "{portfile}", "--parent", "{parent}",
                             "--", "nghttpd", "-a", "127.0.0.1", "--no-tls", "--echo-upload", "{port}"}
  local t = h2.target("http://127.0.0.1:" .. port.port)
  local st <close> = h2.request(t, {method = "POST", path = "/echo", body_stream = true, upload_limit = 256 * 1024})
  local part = string.rep("0123456789abcdef", 65536)     -- 1 MiB
  local reader = sched.spawn(function()
    local resp = assert(st:response())
    T.eq(resp.status, 200)
    local got = {}
    while true do
      local chunk, err = st:read()
      T.eq(err, nil)
      if not chunk then break end
      got[#got + 1] = chunk
    end
    return table.concat(got)
  end)
  for _ = 1, 3 do assert(st:write(part)) end
  st:finish()
  local body = reader:join()
  T.eq(#body, 3 * #part)
  T.ok(body == part:rep(3), "the echo matches")
  T.eq(st:stats().sent, 3 * #part)
  port:stop()
end)

---------------------------------------------------------------------------------------------------
-- failures

T.test("a connect to a closed port, a missing unix socket: UNAVAILABLE", function()
  local _, err = grpc.channel("http://127.0.0.1:1"):unary("/a.B/C", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "Couldn't connect to server 127%.0%.0%.1:1: Connection refused")
  T.eq(err.transport, "connect")
  _, err = grpc.channel("unix:" .. dir .. "/none.sock"):unary("/a.B/C", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "No such file")
end)

T.test("host names are resolved (in a thread: getaddrinfo blocks)", function()
  local reply, err = grpc.channel("http://localhost:" .. grpc_port()):unary("/test.Echo/Say", "by name")
  T.eq(err, nil)
  T.eq(reply, "by name")
  local _, err2 = grpc.channel("http://no-such-host.invalid:80"):unary("/a.B/C", "")
  is_grpc(err2, "UNAVAILABLE")
  T.match(err2.message, "resolve host name 'no%-such%-host%.invalid'")
end)

T.test("the server resets a stream: its code decides the status", function()
  local srv = h2server(function(conn, id)
    conn:headers(id)
    conn:message(id, "first")
    conn:rst(id, conn.srv.code)
  end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  srv.code = "INTERNAL_ERROR"
  local call = assert(ch:server_stream("/a.B/C", ""))
  T.eq(call:recv(), "first")
  local msg, err = call:recv()
  T.eq(msg, nil)
  is_grpc(err, "INTERNAL")
  T.match(err.message, "the server reset the stream %(RST_STREAM INTERNAL_ERROR%)")
  T.eq(err.transport, "reset")
  srv.code = "CANCEL"
  call = assert(ch:server_stream("/a.B/C", ""))
  T.eq(call:recv(), "first")
  is_grpc(select(2, call:recv()), "CANCELLED")
  T.eq(srv.conns, 1, "the connection survives stream resets")
  srv.stop()
end)

T.test("a stream the server refuses is retried, then UNAVAILABLE", function()
  local srv = h2server(function(conn, id)
    if conn.srv.streams <= conn.srv.refuse then conn:rst(id, "REFUSED_STREAM") else conn:reply(id, "served") end
  end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  srv.refuse = 2
  T.eq(ch:unary("/a.B/C", ""), "served")
  T.eq(srv.streams, 3)
  srv.refuse = math.huge
  local _, err = ch:unary("/a.B/C", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "refused the stream")
  T.eq(srv.streams, 3 + 1 + h2.retries)
  srv.stop()
end)

T.test("the server closes the connection mid-call: UNAVAILABLE; the next call reconnects", function()
  local srv = h2server(function(conn, id)
    if conn.n == 1 then
      conn:headers(id)
      conn:message(id, "partial")
      conn:close()
    else
      conn:reply(id, "fresh")
    end
  end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  local call = assert(ch:server_stream("/a.B/C", ""))
  T.eq(call:recv(), "partial")
  local msg, err = call:recv()
  T.eq(msg, nil)
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "the server closed the connection")
  T.eq(err.transport, "lost")
  T.eq(ch:unary("/a.B/C", ""), "fresh")
  T.eq(srv.conns, 2)
  srv.stop()
end)

T.test("an idle connection the server closed is replaced without an error", function()
  local srv = h2server(function(conn, id)
    conn:reply(id, "ok " .. conn.n)
    if conn.n == 1 then sched.spawn(function() sched.sleep(0.05); conn:close() end) end
  end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  T.eq(ch:unary("/a.B/C", ""), "ok 1")
  sched.sleep(0.2)
  T.eq(ch:unary("/a.B/C", ""), "ok 2")
  srv.stop()
end)

T.test("idle connections of targets not used again are closed by a later call to another target", function()
  local a = h2server(function(conn, id) conn:reply(id, "a") end)
  local b = h2server(function(conn, id) conn:reply(id, "b") end)
  local saved = h2.max_idle
  h2.max_idle = 0.2
  local cha = grpc.channel("http://127.0.0.1:" .. a.port)
  local chb = grpc.channel("http://127.0.0.1:" .. b.port)
  T.eq(cha:unary("/a.B/C", ""), "a")
  T.eq(#h2.connections(cha.h2), 1)
  sched.sleep(0.3)
  T.eq(chb:unary("/a.B/C", ""), "b")          -- only target b is used: a's idle connection goes
  T.eq(#h2.connections(cha.h2), 0, "a's idle connection closed")
  T.eq(#h2.connections(chb.h2), 1)
  h2.max_idle = saved
  a.stop(); b.stop()
end)

T.test("GOAWAY: streams above its last id go again on a new connection", function()
  local srv = h2server(function(conn, id)
    if conn.n == 1 and id > 1 then
      conn:goaway(1, "NO_ERROR", "restarting")
    else
      sched.spawn(function() sched.sleep(0.1); conn:reply(id, "conn " .. conn.n) end)
    end
  end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  local replies = {}
  sched.scope(function(s)
    for i = 1, 3 do
      s:spawn(function()
        local reply, err = ch:unary("/a.B/C", "")
        T.eq(err, nil)
        replies[i] = reply
      end)
    end
  end)
  table.sort(replies)
  T.eq(replies, {"conn 1", "conn 2", "conn 2"})
  T.eq(srv.conns, 2)
  T.eq(ch:unary("/a.B/C", ""), "conn 2")
  srv.stop()
end)

T.test("GOAWAY with an error, then the connection closes: UNAVAILABLE naming it", function()
  local srv = h2server(function(conn, id)
    conn:headers(id)
    conn:goaway(id, "ENHANCE_YOUR_CALM", "too_many_pings")
    sched.spawn(function() sched.sleep(0.05); conn:close() end)
  end)
  local call = assert(grpc.channel("http://127.0.0.1:" .. srv.port):server_stream("/a.B/C", ""))
  local msg, err = call:recv()
  T.eq(msg, nil)
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "GOAWAY ENHANCE_YOUR_CALM: \"too_many_pings\"")
  T.eq(err.transport, "goaway")
  srv.stop()
end)

T.test("the deadline and call:close() reset the stream (RST_STREAM CANCEL)", function()
  local srv = h2server(function(conn, id) conn:headers(id); conn:message(id, "hold " .. id) end)
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  local t0 = sched.now()
  local call = assert(ch:server_stream("/a.B/C", "", {timeout = 0.3}))
  T.eq(call:recv(), "hold 1")
  local _, err = call:recv()
  is_grpc(err, "DEADLINE_EXCEEDED")
  T.ok(sched.now() - t0 < 1.5)
  T.ok(wait_until(function() return #srv.rsts(1) == 1 end), "the server saw the reset")
  T.eq(srv.rsts(1)[1][4], CODES.CANCEL)
  call = assert(ch:server_stream("/a.B/C", ""))
  T.eq(call:recv(), "hold 3")
  call:close()
  T.ok(wait_until(function() return #srv.rsts(3) == 1 end), "close() reset the stream")
  local _, cerr = call:recv()
  is_grpc(cerr, "CANCELLED")
  -- a task cancelled while it waits resets its stream too
  local task = sched.spawn(function()
    local c = assert(ch:server_stream("/a.B/C", ""))
    c:recv()
    c:recv()
  end)
  T.ok(wait_until(function() return srv.streams == 3 end))
  sched.sleep(0.05)
  task:cancel()
  T.ok(wait_until(function() return #srv.rsts(5) == 1 end), "the cancelled task's stream was reset")
  T.eq(srv.conns, 1)
  local conns = h2.connections(ch.h2)
  T.eq(#conns, 1)
  T.eq({conns[1].active, conns[1].total}, {0, 3}, "no stream is left running")
  srv.stop()
end)

T.test("beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS another connection opens", function()
  local release = sched.event()
  local open = 0
  local srv = h2server(function(conn, id)
    -- as real servers do, a stream over the limit (sent before our SETTINGS arrived) is refused
    conn.open = (conn.open or 0) + 1
    if conn.open > 2 then
      conn.open = conn.open - 1
      conn:rst(id, "REFUSED_STREAM")
      return
    end
    open = open + 1
    sched.spawn(function() release:wait(); conn:reply(id, "done"); conn.open = conn.open - 1 end)
  end, {{3, 2}})     -- SETTINGS_MAX_CONCURRENT_STREAMS = 2
  local ch = grpc.channel("http://127.0.0.1:" .. srv.port)
  release:set()
  T.eq(ch:unary("/a.B/C", ""), "done")     -- the connection knows the limit now
  release:clear()
  open = 0
  local tasks = {}
  for i = 1, 5 do tasks[i] = sched.spawn(function() return ch:unary("/a.B/C", "") end) end
  T.ok(wait_until(function() return open == 5 end), "all 5 streams open at once (" .. open .. ")")
  T.eq(srv.conns, 3)
  release:set()
  for _, t in ipairs(tasks) do T.eq(t:join(), "done") end
  for _, info in ipairs(h2.connections(ch.h2)) do T.eq(info.max_streams, 2) end
  srv.stop()
end)

---------------------------------------------------------------------------------------------------
-- TLS

local tls
local function tls_server()
  if tls then return tls end
  local d = dir .. "/tls"
  os.execute("mkdir -p " .. servers.quote(d .. "/x"))
  local q = servers.quote
  assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
    .. "-subj /CN=localhost -days 2 -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null")
    :format(q(d .. "/key.pem"), q(d .. "/cert.pem"))))
  local function put(name, bytes) local f = assert(io.open(d .. "/x/" .. name, "wb")); f:write(bytes); f:close() end
  put("mime.types", "application/grpc grpc\n")
  put("ok.grpc", string.pack(">I1s4", 0, "over tls"))
  put("big.bin", string.rep("0123456789abcdef", 4 * 65536))
  local function start(args)
    local argv = {PY, root .. "/tests/helpers/serve.py", "--port-file", "{portfile}", "--parent", "{parent}", "--",
                  "nghttpd", "-a", "127.0.0.1", "-d", d, "--no-content-length", "--mime-types-file=" .. d .. "/x/mime.types",
                  "{port}", d .. "/key.pem", d .. "/cert.pem"}
    for _, a in ipairs(args) do table.insert(argv, #argv - 2, a) end
    return servers.start(argv)
  end
  tls = start{"--trailer=grpc-status: 0"}
  tls.echo = start{"--echo-upload"}       -- answers a POST with its body
  tls.cert = d .. "/cert.pem"
  return tls
end

T.test("TLS with ALPN h2: ca_file (name and IP), insecure, an untrusted certificate", function()
  local s = tls_server()
  local reply, err = grpc.channel("https://localhost:" .. s.port, {ca_file = s.cert}):unary("/x/ok.grpc", "")
  T.eq(err, nil)
  T.eq(reply, "over tls")
  T.eq(grpc.channel("https://127.0.0.1:" .. s.port, {ca_file = s.cert}):unary("/x/ok.grpc", ""), "over tls")
  T.eq(grpc.channel("https://127.0.0.1:" .. s.port, {insecure = true}):unary("/x/ok.grpc", ""), "over tls")
  _, err = grpc.channel("https://localhost:" .. s.port):unary("/x/ok.grpc", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "certificate")
  T.eq(err.transport, "tls")
  _, err = grpc.channel("https://localhost:" .. s.port, {ca_file = dir .. "/missing.pem"}):unary("/x/ok.grpc", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "ca_file")
end)

T.test("TLS: 4 MiB down and 3 MiB up through one connection", function()
  local s = tls_server()
  local t = h2.target("https://localhost:" .. s.echo.port, {ca_file = s.cert})
  local down = h2.request(t, {path = "/x/big.bin"})
  local up = h2.request(t, {method = "POST", path = "/x/echo", body = string.rep("x", 3 * 1024 * 1024)})
  for st, want in pairs{[down] = string.rep("0123456789abcdef", 4 * 65536), [up] = string.rep("x", 3 * 1024 * 1024)} do
    local resp = assert(st:response())
    T.eq(resp.status, 200)
    local parts = {}
    while true do
      local chunk, err = st:read()
      T.eq(err, nil)
      if not chunk then break end
      parts[#parts + 1] = chunk
    end
    T.ok(table.concat(parts) == want, "the body arrived whole")
    st:close()
  end
  T.eq(#h2.connections(t), 1)
end)

T.test("connect_timeout covers a TLS handshake that never finishes", function()
  local l = assert(net.listen{host = "127.0.0.1", port = 0})
  local held = {}
  local acceptor = sched.spawn(function()
    while true do
      local sock = l:accept()
      if not sock then return end
      held[#held + 1] = sock          -- accepted, never answered
    end
  end)
  local t0 = sched.now()
  local _, err = grpc.channel("https://127.0.0.1:" .. l.port, {connect_timeout = 0.3}):unary("/a.B/C", "")
  is_grpc(err, "UNAVAILABLE")
  T.match(err.message, "connect timeout of 0%.3s")
  T.ok(sched.now() - t0 < 2)
  acceptor:cancel()
  l:close()
  for _, sock in ipairs(held) do sock:close() end
end)

---------------------------------------------------------------------------------------------------
-- the libraries are loaded on first use

T.test("start-up loads neither libnghttp2 nor OpenSSL; runbox.h2 loads both", function()
  local r = T.run_code('local function loaded() local n = 0; for l in io.lines("/proc/self/maps") do '
    .. 'if l:match("libnghttp2") or l:match("libssl") then n = n + 1 end end; return n end '
    .. 'print(loaded() == 0); require "runbox.h2"; print(loaded() > 0)')
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, "true\ntrue\n")
end)

T.test("a missing libnghttp2 or libssl fails require('runbox.grpc'), naming library and package", function()
  local r = T.run_code('require("runbox.grpc")', {env = {RUNBOX_LIBNGHTTP2 = "/nonexistent/libnghttp2.so"}})
  T.eq(r.code, 1)
  T.match(r.stderr, "cannot load libnghttp2 .*/nonexistent/libnghttp2%.so.*Debian package libnghttp2%-14")
  r = T.run_code('require("runbox.grpc")', {env = {RUNBOX_LIBSSL = "/nonexistent/libssl.so"}})
  T.eq(r.code, 1)
  T.match(r.stderr, "cannot load OpenSSL %(libssl%) .*Debian package libssl3")
  r = T.run_code('require("runbox.grpc")', {env = {RUNBOX_LIBSSL = "libnghttp2.so.14"}})
  T.match(r.stderr, "lacks TLS_client_method")
end)

local stop <close> = setmetatable({}, {__close = function()
  if pysrv then pysrv:stop() end
  if tls then tls:stop(); tls.echo:stop() end
  h2.close_all()
  os.execute("rm -rf " .. servers.quote(dir))
end})
T.run()
