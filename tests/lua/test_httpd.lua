-- Tests of runbox.httpd, driven by raw clients (runbox.net sockets in other tasks of this process,
-- which also lets us send malformed requests) and by the real curl command line.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local net = require "runbox.net"
local httpd = require "runbox.httpd"

local function connect(srv)
  if srv.unix then return assert(net.connect{unix = srv.unix}) end
  return assert(net.connect{host = "127.0.0.1", port = srv.port})
end

-- Reads one response: {status=, headers=, body=, chunks= (list of chunk sizes)}; nil at EOF.
local function read_response(sock, method)
  local line, err = sock:read_line()
  if not line then return nil, err end
  local r = {status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) ")), line = line, headers = {}}
  assert(r.status, "bad status line: " .. line)
  while true do
    local h = assert(sock:read_line())
    if h == "" then break end
    local k, v = h:match("^([^:]+): (.*)$")
    r.headers[k] = v
  end
  if r.status == 100 then return r end
  if method == "HEAD" or r.status == 204 or r.status == 304 then r.body = ""; return r end
  if r.headers["transfer-encoding"] == "chunked" then
    local parts = {}
    r.chunks = {}
    while true do
      local size_line = sock:read_line()
      if not size_line then r.truncated = true; break end
      local size = tonumber(size_line, 16)
      if size == 0 then assert(sock:read_line() == ""); break end
      parts[#parts + 1] = assert(sock:read_exactly(size))
      r.chunks[#r.chunks + 1] = size
      assert(sock:read_line() == "")
    end
    r.body = table.concat(parts)
  elseif r.headers["content-length"] then
    r.body = assert(sock:read_exactly(tonumber(r.headers["content-length"])))
  else
    local parts = {}
    while true do
      local d = sock:read()
      if not d then break end
      parts[#parts + 1] = d
    end
    r.body = table.concat(parts)
  end
  return r
end

-- Sends raw bytes on a new connection and reads one response.
local function exchange(srv, bytes, method)
  local s = connect(srv)
  assert(s:write(bytes))
  local r = read_response(s, method)
  return r, s
end

local function request(srv, method, target, opts)
  opts = opts or {}
  local lines = {("%s %s HTTP/1.1\r\nhost: test\r\n"):format(method, target)}
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v .. "\r\n" end
  if opts.body then lines[#lines + 1] = "content-length: " .. #opts.body .. "\r\n" end
  lines[#lines + 1] = "\r\n" .. (opts.body or "")
  return table.concat(lines)
end

-- A server whose log lines are kept in srv_logs instead of going to stderr.
local function serve(handler, opts)
  opts = opts or {}
  local logs = {}
  opts.port = opts.port or 0
  opts.log = function(msg) logs[#logs + 1] = msg end
  local srv = assert(httpd.serve(opts, handler))
  srv.logs = logs
  return srv
end

local function echo(req, res)
  local body = req:body()
  res:header("content-type", "text/plain")
  res:send(("%s %s %s q=%s body=%s"):format(req.method, req.path, req.version,
    req.query.a or "-", body))
end

---------------------------------------------------------------------------------------------------

T.test("GET with query, headers and version", function()
  local seen
  local srv = serve(function(req, res)
    seen = req
    res:status(201):header("X-Custom", "yes"):send("made")
  end)
  T.match(srv.url, "^http://127%.0%.0%.1:%d+$")
  local r, s = exchange(srv, "GET /a%20b/c?x=1&y=two+words&z=%26&flag HTTP/1.1\r\nHost: h\r\nX-Thing: A\r\n" ..
    "X-Thing: B\r\n\r\n")
  T.eq(r.status, 201)
  T.eq(r.line, "HTTP/1.1 201 Created")
  T.eq(r.headers["x-custom"], "yes")
  T.eq(r.headers["content-length"], "4")
  T.match(r.headers.date, "GMT$")
  T.eq(r.body, "made")
  T.eq(seen.method, "GET")
  T.eq(seen.path, "/a b/c")
  T.eq(seen.target, "/a%20b/c?x=1&y=two+words&z=%26&flag")
  T.eq(seen.query, {x = "1", y = "two words", z = "&", flag = ""})
  T.eq(seen.version, "1.1")
  T.eq(seen.headers.host, "h")
  T.eq(seen.headers["x-thing"], "A, B")
  T.eq(#seen.header_list, 3)
  T.match(seen.peer, "^127%.0%.0%.1:")
  s:close()
  srv:close()
end)

T.test("POST with content-length, keep-alive with two requests on one connection", function()
  local srv = serve(echo)
  local s = connect(srv)
  s:write(request(srv, "POST", "/one?a=1", {body = "hello"}))
  local r1 = read_response(s)
  T.eq(r1.body, "POST /one 1.1 q=1 body=hello")
  T.eq(r1.headers.connection, nil, "kept alive")
  s:write(request(srv, "POST", "/two", {body = string.rep("x", 100000)}))
  local r2 = read_response(s)
  T.eq(#r2.body, #"POST /two 1.1 q=- body=" + 100000)
  s:close()
  srv:close()
end)

T.test("chunked request body with extensions and trailers", function()
  local srv = serve(echo)
  local r, s = exchange(srv, "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" ..
    "5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
  T.eq(r.status, 200)
  T.eq(r.body, "POST /up 1.1 q=- body=hello 0123456789")
  -- the connection carries a next request after a chunked body
  s:write(request(srv, "GET", "/next"))
  T.eq(read_response(s).body, "GET /next 1.1 q=- body=")
  s:close()
  srv:close()
end)

T.test("req:chunks streams the body as it arrives", function()
  local pieces = {}
  local got_first = sched.event()
  local srv = serve(function(req, res)
    for piece in req:chunks() do
      pieces[#pieces + 1] = piece
      got_first:set()
    end
    res:send(tostring(#pieces))
  end)
  local s = connect(srv)
  s:write("PUT /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
  got_first:wait()      -- the handler saw the first chunk before the client sent the rest
  T.eq(pieces, {"abc"})
  s:write("3\r\ndef\r\n0\r\n\r\n")
  local r = read_response(s)
  T.eq(r.body, "2")
  T.eq(pieces, {"abc", "def"})
  s:close()
  srv:close()
end)

T.test("pipelined requests are answered in order", function()
  local srv = serve(function(req, res)
    if req.path == "/slow" then sched.sleep(0.05) end
    res:send(req.path .. ":" .. req:body())
  end)
  local s = connect(srv)
  s:write(request(srv, "GET", "/slow") .. request(srv, "POST", "/b", {body = "xy"}) .. request(srv, "GET", "/c"))
  T.eq(read_response(s).body, "/slow:")
  T.eq(read_response(s).body, "/b:xy")
  T.eq(read_response(s).body, "/c:")
  s:close()
  srv:close()
end)

T.test("a handler that ignores the body: the connection is drained for the next request", function()
  local srv = serve(function(req, res) res:send("ignored " .. req.path) end)
  local s = connect(srv)
  s:write(request(srv, "POST", "/a", {body = string.rep("z", 5000)}) ..
    "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n" .. request(srv, "GET", "/c"))
  T.eq(read_response(s).body, "ignored /a")
  T.eq(read_response(s).body, "ignored /b")
  T.eq(read_response(s).body, "ignored /c")
  s:close()
  srv:close()
end)

T.test("streamed chunked response arrives before the handler finishes", function()
  local go = sched.event()
  local finished = false
  local srv = serve(function(req, res)
    res:header("content-type", "text/plain")
    T.ok(res:write("first;"))
    go:wait()
    T.ok(res:write("second;"))
    T.ok(res:write(""), "empty writes are skipped (they would end the body)")
    res:finish()
    finished = true
  end)
  local s = connect(srv)
  s:write(request(srv, "GET", "/stream"))
  T.eq(s:read_line(), "HTTP/1.1 200 OK")
  local head = {}
  while true do
    local l = s:read_line()
    if l == "" then break end
    head[#head + 1] = l
  end
  T.ok(table.concat(head, "\n"):find("transfer-encoding: chunked", 1, true))
  T.eq(s:read_line(), "6")
  T.eq(s:read_line(), "first;")
  T.eq(finished, false, "the handler is still running")
  go:set()
  T.eq(s:read_line(), "7")
  T.eq(s:read_line(), "second;")
  T.eq(s:read_line(), "0")
  T.eq(s:read_line(), "")
  sched.sleep(0.01)
  T.ok(finished)
  s:close()
  srv:close()
end)

T.test("server-sent events: exact bytes", function()
  local srv = serve(function(req, res)
    res:sse_start()
    res:sse{event = "delta", data = "line1\nline2", id = "1"}
    res:sse{data = ""}
    res:sse("plain")
    res:sse{comment = "keep-alive", retry = 1000}
    res:sse{data = "a\r\nb\rc\n"}
    res:finish()
  end)
  local r, s = exchange(srv, request(srv, "GET", "/events"))
  T.eq(r.headers["content-type"], "text/event-stream")
  T.eq(r.headers["cache-control"], "no-cache")
  T.eq(r.body, "event: delta\nid: 1\ndata: line1\ndata: line2\n\n" ..
    "data: \n\n" ..
    "data: plain\n\n" ..
    ": keep-alive\nretry: 1000\n\n" ..
    "data: a\ndata: b\ndata: c\ndata: \n\n")
  T.eq(#r.chunks, 5, "one chunk per event")
  s:close()
  srv:close()
  T.raises("one line", httpd.sse_event, {event = "a\nb"})
end)

T.test("malformed requests get 400 and the connection is closed", function()
  local handled = 0
  local srv = serve(function(req, res) handled = handled + 1; res:send("ok") end,
    {max_line = 200, max_headers = 10})
  local many = {}
  for i = 1, 11 do many[i] = "x-h" .. i .. ": v\r\n" end
  local cases = {
    ["bad request line"] = "GET /\r\n\r\n",
    ["lower version text"] = "GET / http/1.1\r\n\r\n",
    ["extra spaces"] = "GET  /  HTTP/1.1\r\n\r\n",
    ["request line too long"] = "GET /" .. string.rep("a", 300) .. " HTTP/1.1\r\n\r\n",
    ["header line too long"] = "GET / HTTP/1.1\r\nx-long: " .. string.rep("b", 300) .. "\r\n\r\n",
    ["too many headers"] = "GET / HTTP/1.1\r\n" .. table.concat(many) .. "\r\n",
    ["header without colon"] = "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ["space before colon"] = "GET / HTTP/1.1\r\nhost : h\r\n\r\n",
    ["folded header"] = "GET / HTTP/1.1\r\nx-a: b\r\n  continued\r\n\r\n",
    ["bad chunk size"] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ["negative chunk size"] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    ["huge chunk size"] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n",
    ["chunk longer than its size"] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    ["content-length and transfer-encoding"] =
      "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ["bad content-length"] = "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello",
    ["two content-lengths"] = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ["bad target"] = "GET nope HTTP/1.1\r\n\r\n",
  }
  local body_cases = {["bad chunk size"] = true, ["negative chunk size"] = true, ["huge chunk size"] = true,
    ["chunk longer than its size"] = true}
  for name, bytes in pairs(cases) do
    local srv_handler = function(req, res) res:send(req:body()) end
    local target = body_cases[name] and serve(srv_handler, {max_line = 200}) or srv
    local r, s = exchange(target, bytes)
    T.eq(r and r.status, 400, name)
    T.eq(r.headers.connection, "close", name)
    T.eq(s:read(), nil, name .. ": connection closed")
    s:close()
    if target ~= srv then target:close() end
  end
  T.eq(handled, 0, "no handler ran")
  srv:close()
end)

T.test("other refusals: 505, 501, 417", function()
  local srv = serve(function(req, res) res:send("ok") end)
  T.eq(exchange(srv, "GET / HTTP/2.0\r\n\r\n").status, 505)
  T.eq(exchange(srv, "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status, 501)
  T.eq(exchange(srv, "POST / HTTP/1.1\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx").status, 417)
  srv:close()
end)

T.test("413 for a body over the limit", function()
  local srv = serve(function(req, res) res:send(#req:body() .. " bytes") end, {max_body = 100})
  local r, s = exchange(srv, request(srv, "POST", "/", {body = string.rep("a", 101)}))
  T.eq(r.status, 413)
  T.eq(r.headers.connection, "close")
  T.eq(s:read(), nil)
  r = exchange(srv, request(srv, "POST", "/", {body = string.rep("a", 100)}))
  T.eq(r.body, "100 bytes")
  local chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" ..
    string.rep("20\r\n" .. string.rep("c", 32) .. "\r\n", 4) .. "0\r\n\r\n"
  r = exchange(srv, chunked)
  T.eq(r.status, 413)
  T.eq(srv.logs, {}, "not a handler failure")
  srv:close()
end)

T.test("a handler that raises gets 500, logged with its traceback", function()
  local srv = serve(httpd.router{
    ["GET /boom"] = function() error("kaboom") end,
    ["GET /late"] = function(req, res) res:write("partial"); error("late failure") end,
    ["GET /denied"] = function() httpd.error(403, "no entry") end,
  })
  local r, s = exchange(srv, request(srv, "GET", "/boom"))
  T.eq(r.status, 500)
  T.eq(r.body, "internal server error\n")
  T.eq(r.headers.connection, "close")
  T.eq(#srv.logs, 1)
  T.match(srv.logs[1], "handler failed on GET /boom: .*kaboom")
  T.match(srv.logs[1], "stack traceback")
  s:close()
  -- the response had started: the client sees the connection close mid-body
  r, s = exchange(srv, request(srv, "GET", "/late"))
  T.eq(r.status, 200)
  T.ok(r.truncated, "no final chunk")
  T.eq(r.body, "partial")
  T.match(srv.logs[2], "late failure")
  s:close()
  r = exchange(srv, request(srv, "GET", "/denied"))
  T.eq(r.status, 403)
  T.eq(r.body, "no entry\n")
  T.eq(#srv.logs, 2, "httpd.error is not logged")
  srv:close()
end)

T.test("a client that disconnects mid-stream: res:write returns nil, err", function()
  local result = sched.event()
  local writes, werr = 0, nil
  local srv = serve(function(req, res)
    while true do
      local ok, err = res:write(string.rep("d", 1000))
      if not ok then werr = err; break end
      writes = writes + 1
      sched.sleep(0.005)
    end
    result:set()
  end)
  local s = connect(srv)
  s:write(request(srv, "GET", "/forever"))
  T.eq(s:read_line(), "HTTP/1.1 200 OK")
  s:close()
  result:wait()
  T.ok(werr, "write reported the failure")
  T.ok(writes >= 1)
  T.match(tostring(werr), ".")
  sched.sleep(0.01)
  T.eq(srv.logs, {}, "no handler error")
  T.eq(srv:connections(), 0)
  srv:close()
end)

T.test("HEAD: headers with the length, no body", function()
  local srv = serve(function(req, res) res:send("twelve bytes") end)
  local s = connect(srv)
  s:write(request(srv, "HEAD", "/") .. request(srv, "GET", "/"))
  local r = read_response(s, "HEAD")
  T.eq(r.headers["content-length"], "12")
  T.eq(read_response(s).body, "twelve bytes", "the next response follows right after the head")
  s:close()
  srv:close()
end)

T.test("Expect: 100-continue", function()
  local srv = serve(function(req, res) res:send("got " .. req:body()) end)
  local s = connect(srv)
  s:write("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
  local interim = read_response(s)
  T.eq(interim.status, 100)
  s:write("data")
  T.eq(read_response(s).body, "got data")
  s:close()
  -- a handler that answers without reading: no 100, and the connection closes after
  local srv2 = serve(function(req, res) res:status(401):send("no") end)
  local r, s2 = exchange(srv2, "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
  T.eq(r.status, 401)
  T.eq(r.headers.connection, "close")
  s2:close()
  srv:close(); srv2:close()
end)

T.test("Connection: close and HTTP/1.0", function()
  local srv = serve(function(req, res)
    if req.path == "/stream" then res:write("a"); res:write("b"); return end
    res:send("x")
  end)
  local r, s = exchange(srv, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
  T.eq(r.headers.connection, "close")
  T.eq(s:read(), nil)
  r, s = exchange(srv, "GET / HTTP/1.0\r\n\r\n")
  T.eq(r.headers.connection, "close", "1.0 closes by default")
  T.eq(s:read(), nil)
  r, s = exchange(srv, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
  T.eq(r.headers.connection, "keep-alive")
  s:write("GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
  r = read_response(s)
  T.eq(r.headers["transfer-encoding"], nil, "no chunked encoding for 1.0")
  T.eq(r.body, "ab", "the body ends with the connection")
  srv:close()
end)

T.test("idle connections time out", function()
  local srv = serve(function(req, res) res:send("x") end, {idle_timeout = 0.1})
  local s = connect(srv)
  s:write(request(srv, "GET", "/"))
  T.eq(read_response(s).body, "x")
  local t0 = sched.now()
  T.eq(s:read(), nil, "the server closed the idle connection")
  T.ok(sched.now() - t0 < 2)
  T.eq(srv:connections(), 0)
  srv:close()
end)

T.test("router: params, wildcard, HEAD via GET, 404, 405", function()
  local srv = serve(httpd.router{
    ["GET /health"] = function(req, res) res:send("ok") end,
    ["GET /runs/:id/logs"] = function(req, res) res:send("logs of " .. req.params.id) end,
    ["GET /runs/latest/logs"] = function(req, res) res:send("latest") end,
    ["POST /runs"] = function(req, res) res:status(201):send("created") end,
    ["GET /files/*"] = function(req, res) res:send("file " .. req.params["*"]) end,
    ["* /any"] = function(req, res) res:send("any " .. req.method) end,
  })
  local function get(method, path) return exchange(srv, request(srv, method, path), method) end
  T.eq(get("GET", "/health").body, "ok")
  T.eq(get("GET", "/runs/r42/logs").body, "logs of r42")
  T.eq(get("GET", "/runs/latest/logs").body, "latest", "literal segments win over params")
  T.eq(get("POST", "/runs").status, 201)
  T.eq(get("GET", "/files/a/b.txt").body, "file a/b.txt")
  T.eq(get("DELETE", "/any").body, "any DELETE")
  local head = get("HEAD", "/health")
  T.eq(head.status, 200)
  T.eq(head.headers["content-length"], "2")
  T.eq(get("GET", "/nope").status, 404)
  local r = get("GET", "/runs")
  T.eq(r.status, 405)
  T.eq(r.headers.allow, "POST")
  T.raises("must look like", httpd.router, {["/health"] = function() end})
  srv:close()
end)

T.test("200 concurrent connections", function()
  local inflight, peak = 0, 0
  local all_in = sched.event()
  local srv = serve(function(req, res)
    inflight = inflight + 1
    peak = math.max(peak, inflight)
    if inflight == 200 then all_in:set() end
    sched.timeout(10, all_in.wait, all_in)    -- every handler waits until all 200 run at once
    inflight = inflight - 1
    res:send(req.path)
  end)
  local clients = {}
  for i = 1, 200 do
    clients[i] = sched.spawn(function()
      local r, s = exchange(srv, request(srv, "GET", "/c" .. i))
      s:close()
      return r.body
    end)
  end
  for i, t in ipairs(clients) do T.eq(t:join(), "/c" .. i) end
  T.eq(peak, 200, "all handlers ran concurrently")
  srv:close()
end)

T.test("max_connections pauses accepting", function()
  local srv = serve(function(req, res) res:send("hi") end, {max_connections = 2})
  local a, b = connect(srv), connect(srv)
  a:write(request(srv, "GET", "/")); T.eq(read_response(a).body, "hi")
  b:write(request(srv, "GET", "/")); T.eq(read_response(b).body, "hi")
  local c = connect(srv)      -- the kernel completes the connection; the server does not take it yet
  c:write(request(srv, "GET", "/"))
  c:set_timeout(0.1)
  local r, err = read_response(c)
  T.eq(r, nil)
  T.eq(err.code, "timeout")
  T.eq(srv:connections(), 2)
  a:close()
  c:set_timeout(nil)
  T.eq(read_response(c).body, "hi", "served once a slot was free")
  b:close(); c:close()
  srv:close()
end)

T.test("a streamed body with a declared content-length is sent as is", function()
  local srv = serve(httpd.router{
    ["GET /exact"] = function(req, res)
      res:header("content-length", 6)
      res:write("abc"); res:write("def")
    end,
    ["GET /short"] = function(req, res)
      res:header("content-length", 10)
      res:write("abc")
    end,
    ["GET /long"] = function(req, res)
      res:header("content-length", 2)
      res:write("abc")
    end,
  })
  local s = connect(srv)
  s:write(request(srv, "GET", "/exact"))
  local r = read_response(s)
  T.eq(r.body, "abcdef")
  T.eq(r.headers["transfer-encoding"], nil)
  s:write(request(srv, "GET", "/exact"))
  T.eq(read_response(s).body, "abcdef", "kept alive")
  s:close()
  s = connect(srv)
  s:write(request(srv, "GET", "/short"))
  T.eq(s:read_line(), "HTTP/1.1 200 OK")
  repeat local l = s:read_line() until l == ""
  T.eq(s:read_exactly(10), nil, "the connection closes instead of waiting forever")
  s:close()
  s = connect(srv)
  s:write(request(srv, "GET", "/long"))
  T.eq(s:read_line(), "HTTP/1.1 200 OK")
  repeat local l = s:read_line() until l == ""
  T.eq(s:read(), nil, "nothing beyond the declared length; the connection closes")
  T.match(srv.logs[1], "more bytes than the content%-length")
  s:close()
  srv:close()
end)

T.test("unix socket listener", function()
  local path = os.tmpname()
  os.remove(path)
  local srv = serve(function(req, res) res:send("over unix " .. req.path) end, {unix = path})
  T.eq(srv.unix, path)
  T.eq(srv.url, "http://localhost")
  local r, s = exchange(srv, request(srv, "GET", "/u"))
  T.eq(r.body, "over unix /u")
  s:close()
  srv:close()
  T.eq(select(3, io.open(path)), 2, "socket file removed")
end)

T.test("server close with connections open: nothing left running, no fd leaks", function()
  local before = T.open_fds()
  local cleaned, started = false, sched.event()
  local srv = serve(httpd.router{
    ["GET /quick"] = function(req, res) res:send("quick") end,
    ["GET /hang"] = function(req, res)
      local guard <close> = setmetatable({}, {__close = function() cleaned = true end})
      res:write("begun")
      started:set()
      sched.event():wait()     -- never set: only cancellation ends this handler
    end,
  })
  local idle = connect(srv)
  idle:write(request(srv, "GET", "/quick"))
  T.eq(read_response(idle).body, "quick")
  local busy = connect(srv)
  busy:write(request(srv, "GET", "/hang"))
  started:wait()
  local half = connect(srv)
  half:write("GET /quick HTTP/1.1\r\n")    -- a request still arriving
  for _ = 1, 500 do if srv:connections() == 3 then break end sched.sleep(0.01) end
  T.eq(srv:connections(), 3)
  srv:close()
  T.ok(cleaned, "the hanging handler was cancelled and cleaned up")
  T.eq(srv:connections(), 0)
  T.ok(srv.accept_task:done())
  T.eq(idle:read(), nil, "idle connection closed")
  local r = read_response(busy)
  T.ok(r.truncated, "the busy response ends without its last chunk")
  T.eq(half:read(), nil)
  local late, err = net.connect{host = "127.0.0.1", port = srv.port}
  T.eq(late, nil, "no longer listening")
  T.eq(err.code, "connect")
  idle:close(); busy:close(); half:close()
  T.eq(T.open_fds(), before)
  T.eq(srv.logs, {})
end)

T.test("server close with grace lets requests in flight finish", function()
  local srv = serve(function(req, res) sched.sleep(0.1); res:send("done") end)
  local s = connect(srv)
  s:write(request(srv, "GET", "/"))
  sched.sleep(0.02)
  srv:close{grace = 2}
  local r = read_response(s)
  T.eq(r.body, "done")
  T.eq(r.headers.connection, "close", "no keep-alive once closing")
  s:close()
end)

T.test("a server left open ends with the program, its unix socket file removed", function()
  local bin = os.getenv("RUNBOX_BIN")
  if not bin then
    local f = io.open("/proc/self/stat"); local pid = f:read("a"):match("^(%d+)"); f:close()
    local out = os.tmpname()
    os.execute("readlink /proc/" .. pid .. "/exe > " .. out)
    bin = io.lines(out)()
    os.remove(out)
    if not bin:match("runbox[^/]*$") then return end   -- under valgrind: set RUNBOX_BIN to test this
  end
  local path = os.tmpname()
  os.remove(path)
  local code = ([[local httpd = require "runbox.httpd"
    local srv = assert(httpd.serve({unix = %q}, function(req, res) res:send("x") end))
    assert(io.open(%q) == nil and select(3, io.open(%q)) ~= 2, "socket file exists")]]):format(path, path, path)
  local ok, how, status = os.execute(("%s -e '%s' 2>&1"):format(bin, code))
  T.ok(ok, ("runbox -e failed: %s %s"):format(how, status))
  T.eq(select(3, io.open(path)), 2, "socket file removed at exit")
end)

T.test("a handler may close its own server", function()
  local srv
  srv = serve(function(req, res) res:send("bye"); srv:close() end)
  local r, s = exchange(srv, request(srv, "GET", "/"))
  T.eq(r.body, "bye")
  s:close()
  for _ = 1, 100 do if srv.accept_task:done() and srv:connections() == 0 then break end sched.sleep(0.01) end
  T.ok(srv.accept_task:done())
end)

T.test("response API checks", function()
  local errs = {}
  local srv = serve(function(req, res)
    errs.name = select(2, pcall(res.header, res, "bad name", "x"))
    errs.value = select(2, pcall(res.header, res, "x-a", "line\r\nbreak"))
    errs.status = select(2, pcall(res.status, res, 42))
    res:add_header("set-cookie", "a=1"):add_header("set-cookie", "b=2")
    res:send("x")
    errs.twice = select(2, pcall(res.send, res, "y"))
  end)
  local s = connect(srv)
  s:write(request(srv, "GET", "/"))
  T.eq(s:read_line(), "HTTP/1.1 200 OK")
  local cookies = 0
  while true do
    local l = s:read_line()
    if l == "" then break end
    if l:match("^set%-cookie") then cookies = cookies + 1 end
  end
  T.eq(cookies, 2)
  T.match(errs.name, "bad header name")
  T.match(errs.value, "line break")
  T.match(errs.status, "100%.%.999")
  T.match(errs.twice, "already started")
  s:close()
  srv:close()
end)

T.test("real clients: curl GET, POST, chunked upload, streaming", function()
  local srv = serve(httpd.router{
    ["GET /hello"] = function(req, res) res:send("hello " .. (req.query.name or "?")) end,
    ["POST /echo"] = function(req, res) res:send(req:body()) end,
    ["GET /sse"] = function(req, res)
      res:sse_start()
      for i = 1, 3 do res:sse{data = "tick " .. i}; sched.sleep(0.01) end
      res:finish()
    end,
  })
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local u = srv.url
  local script = table.concat({
    "curl -sS --fail '" .. u .. "/hello?name=curl' > " .. dir .. "/get",
    "curl -sS --fail --data-binary 'posted body' " .. u .. "/echo > " .. dir .. "/post",
    "printf 'streamed upload' | curl -sS --fail -H 'Transfer-Encoding: chunked' --data-binary @- " ..
      u .. "/echo > " .. dir .. "/chunked",
    "curl -sS --fail -N " .. u .. "/sse > " .. dir .. "/sse",
    "curl -sS --fail " .. u .. "/hello " .. u .. "/hello > " .. dir .. "/keepalive",
  }, " && ")
  -- in the background, so os.execute returns at once and the loop keeps serving
  os.execute("( " .. script .. "; echo $? > " .. dir .. "/done ) >" .. dir .. "/log 2>&1 &")
  local done
  for _ = 1, 500 do
    local f = io.open(dir .. "/done")
    if f then done = f:read("l"); f:close(); break end
    sched.sleep(0.02)
  end
  local function file(n) local f = io.open(dir .. "/" .. n); local d = f and f:read("a"); if f then f:close() end; return d end
  T.eq(done, "0", "curl succeeded: " .. tostring(file("log")))
  T.eq(file("get"), "hello curl")
  T.eq(file("post"), "posted body")
  T.eq(file("chunked"), "streamed upload")
  T.eq(file("sse"), "data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n")
  T.eq(file("keepalive"), "hello ?hello ?")
  os.execute("rm -rf " .. dir)
  srv:close()
end)

T.run()
