-- runbox.http against real servers started here: a Python HTTP/1.1 server (TCP and unix socket)
-- and nghttpd for HTTP/2 over TLS and cleartext.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local http = require "runbox.http"
local errors = require "runbox.errors"

local root = (arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local servers = dofile(root .. "/tests/helpers/servers.lua")
local PY = "/usr/bin/python3"

local function start_py(extra)
  local argv = {PY, root .. "/tests/helpers/http_server.py", "--port-file", "{portfile}", "--parent", "{parent}"}
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  return servers.start(argv)
end

-- one HTTP/1.1 server for most tests, started on first use and stopped at the end
local srv
local function base()
  srv = srv or start_py()
  return "http://127.0.0.1:" .. srv.port
end

-- nghttpd over TLS and cleartext, serving a small tree
local h2
local function nghttpd()
  if h2 then return h2 end
  local dir = servers.tempdir()
  local q = servers.quote
  assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
    .. "-subj /CN=localhost -days 2 -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null")
    :format(q(dir .. "/key.pem"), q(dir .. "/cert.pem"))))
  local f = assert(io.open(dir .. "/hello.txt", "w")); f:write("hello h2\n"); f:close()
  f = assert(io.open(dir .. "/big.bin", "wb")); f:write(string.rep("0123456789abcdef", 3 * 65536)); f:close()
  local function serve(args)
    local argv = {PY, root .. "/tests/helpers/serve.py", "--port-file", "{portfile}", "--parent", "{parent}", "--",
                  "nghttpd", "-a", "127.0.0.1", "-d", dir}
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return servers.start(argv)
  end
  h2 = {dir = dir, cert = dir .. "/cert.pem"}
  h2.tls = serve{"--echo-upload", "{port}", dir .. "/key.pem", dir .. "/cert.pem"}
  h2.clear = serve{"--no-tls", "--no-content-length", "--trailer", "x-trailer: yes", "{port}"}
  return h2
end

T.test("GET: status, headers, body, version", function()
  local r = assert(http.get(base() .. "/hello"))
  T.eq(r.status, 200)
  T.eq(r.body, "hello world")
  T.eq(r.http_version, "1.1")
  T.eq(r.headers["content-type"], "text/plain")
  T.eq(r.headers["x-multi"], "a, b")
  local multi = {}
  for _, h in ipairs(r.header_list) do if h.name:lower() == "x-multi" then multi[#multi + 1] = h.value end end
  T.eq(multi, {"a", "b"})
end)

T.test("a non-2xx status is a response, not an error", function()
  local r, err = http.get(base() .. "/status/503")
  T.eq(err, nil)
  T.eq(r.status, 503)
  T.eq(r.body, "status 503")
end)

T.test("request headers as a table or a list, default user agent", function()
  local r = assert(http.get(base() .. "/headers", {headers = {["X-One"] = "1", "X-Two: two words", ["X-Empty"] = ""}}))
  T.match(r.body, "x%-one: 1\n")
  T.match(r.body, "x%-empty: \n")
  T.match(r.body, "x%-two: two words\n")
  T.match(r.body, "user%-agent: runbox/")
  T.ok(not r.body:find("expect:"), "no Expect: 100-continue")
  T.raises("header", http.get, base() .. "/headers", {headers = {["X-Bad"] = "a\r\nInjected: yes"}})
end)

T.test("POST, PUT, HEAD and methods", function()
  local r = assert(http.post(base() .. "/echo", "payload"))
  T.eq(r.body, "payload")
  T.eq(r.headers["x-method"], "POST")
  r = assert(http.request{method = "PUT", url = base() .. "/echo", body = "put body"})
  T.eq({r.body, r.headers["x-method"]}, {"put body", "PUT"})
  r = assert(http.request{method = "HEAD", url = base() .. "/hello"})
  T.eq({r.status, r.body, r.headers["content-length"]}, {200, "", "11"})
  r = assert(http.post(base() .. "/echo", ""))
  T.eq(r.body, "")
end)

T.test("bad options raise", function()
  T.raises("unknown option 'timout'", http.request, {url = base(), timout = 3})
  T.raises("http_version", http.request, {url = base(), http_version = "3"})
  T.raises("'url' is required", http.request, {})
  T.raises("must be a number", http.request, {url = base(), timeout = "3"})
  T.raises("http.open", http.request, {url = base(), body_stream = true})
end)

T.test("streamed response: chunks arrive before the server finishes", function()
  local t0 = sched.now()
  local r = assert(http.request{url = base() .. "/slow?n=3&delay=0.4", stream = true})
  local first = r:read()
  local t_first = sched.now() - t0
  T.eq(first, "line 0\n")
  T.ok(t_first < 0.35, ("first chunk after %.2fs, the server sleeps 0.4s before the next"):format(t_first))
  local rest = {}
  for chunk in r:chunks() do rest[#rest + 1] = chunk end
  T.eq(table.concat(rest), "line 1\nline 2\n")
  T.ok(sched.now() - t0 >= 0.75)
  T.eq(r:read(), nil)
end)

T.test("lines() splits across chunks", function()
  local r = assert(http.request{url = base() .. "/slow?n=4&delay=0.01", stream = true})
  local lines = {}
  for line in r:lines() do lines[#lines + 1] = line end
  T.eq(lines, {"line 0", "line 1", "line 2", "line 3"})
end)

T.test("50 MB body streamed through a bounded buffer (pause and unpause)", function()
  local size, limit = 50 * 1024 * 1024, 256 * 1024
  local r = assert(http.request{url = base() .. "/large?size=" .. size, stream = true, body_limit = limit})
  local total, n, head, tail = 0, 0, nil, ""
  for chunk in r:chunks() do
    total = total + #chunk
    head = head or chunk:sub(1, 16)
    tail = chunk:sub(-16)
    n = n + 1
    if n % 20 == 0 then sched.sleep(0.001) end   -- a slow reader, so the buffer fills up
  end
  local st = r:stats()
  T.eq(total, size)
  T.eq({head, tail}, {"0123456789abcdef", "0123456789abcdef"})
  T.ok(st.pauses > 0, "the transfer paused")
  T.ok(st.body_peak <= limit + 64 * 1024, ("buffer peaked at %d bytes"):format(st.body_peak))
end)

T.test("whole large body without streaming", function()
  local r = assert(http.get(base() .. "/large?size=" .. 8 * 1024 * 1024))
  T.eq(#r.body, 8 * 1024 * 1024)
end)

T.test("streamed upload of 20 MB in chunks", function()
  local t = http.open{method = "POST", url = base() .. "/echo", body_stream = true, upload_limit = 256 * 1024}
  local parts = {}
  for i = 1, 80 do
    local chunk = string.rep(string.char(65 + i % 26), 256 * 1024 - i)
    parts[i] = chunk
    assert(t:write(chunk))
    T.ok(t:stats().upload_buffered <= 2 * 256 * 1024)
  end
  t:finish()
  local r = assert(t:response())
  local body = assert(r:read_all())
  T.eq(r.headers["x-request-transfer-encoding"], "chunked")
  T.eq(#body, #table.concat(parts))
  T.ok(body == table.concat(parts), "echoed body matches")
  t:close()
  T.raises("write", function() assert(t:write("more")) end)
end)

T.test("streamed upload with a known size is not chunked", function()
  local t <close> = http.open{method = "PUT", url = base() .. "/echo", body_stream = true, body_size = 10}
  assert(t:write("01234"))
  assert(t:write("56789"))
  t:finish()
  local r = assert(t:response())
  T.eq({assert(r:read_all()), r.headers["x-request-transfer-encoding"], r.headers["x-method"]}, {"0123456789", "none", "PUT"})
  T.eq(t:stats().uploaded, 10)
end)

T.test("HTTP/1.1 chunked trailers are kept apart from headers", function()
  local r = assert(http.get(base() .. "/trailers"))
  T.eq(r.body, "part one,part two")
  T.eq(r.trailers["x-checksum"], "abc123")
  T.eq(r.headers["x-checksum"], nil)
end)

T.test("redirects are not followed unless asked", function()
  local r = assert(http.get(base() .. "/redirect"))
  T.eq({r.status, r.headers.location}, {302, "/hello"})
  r = assert(http.get(base() .. "/redirect", {follow = true}))
  T.eq({r.status, r.body}, {200, "hello world"})
end)

T.test("unix socket: option and http+unix URL", function()
  local dir, guard <close> = servers.tempdir()
  local sock = dir .. "/api.sock"
  local s <close> = start_py{"--unix", sock}
  local r = assert(http.get("http://localhost/hello", {unix_socket = sock}))
  T.eq(r.body, "hello world")
  local url = "http+unix://" .. sock:gsub("/", "%%2F") .. "/echo"
  r = assert(http.post(url, "via unix"))
  T.eq(r.body, "via unix")
end)

T.test("refused connection: nil and curl's message with the URL", function()
  local r, err = http.get("http://127.0.0.1:1/nothing")
  T.eq(r, nil)
  T.ok(errors.is(err, "http"))
  T.eq(err.curl_code, 7)
  T.match(err.message, "^Couldn't connect to server: Failed to connect to 127%.0%.0%.1 port 1")
  T.match(err.message, "GET http://127%.0%.0%.1:1/nothing")
end)

T.test("timeout option gives a timeout error", function()
  local t0 = sched.now()
  local r, err = http.get(base() .. "/sleep?s=3", {timeout = 0.3})
  T.eq(r, nil)
  T.ok(errors.is(err, "timeout"), tostring(err))
  T.eq(err.curl_code, 28)
  T.ok(sched.now() - t0 < 2)
end)

T.test("a deadline cancels the transfer in flight; the next request works", function()
  local before = http.live()
  local ok, err = pcall(sched.deadline, 0.2, http.get, base() .. "/sleep?s=3")
  T.eq(ok, false)
  T.ok(errors.is(err, "timeout"), tostring(err))
  T.eq(http.live(), before, "the transfer was removed")
  local r = assert(http.get(base() .. "/hello"))
  T.eq(r.body, "hello world")
end)

T.test("cancelling a task stops its streaming request", function()
  local t = sched.spawn(function()
    local r = assert(http.request{url = base() .. "/slow?n=5&delay=1", stream = true})
    for _ in r:chunks() do end
  end)
  sched.sleep(0.2)
  T.eq(http.live(), 1)
  t:cancel("test")
  local ok, err = t:wait()
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"))
  T.eq(http.live(), 0)
end)

T.test("a dropped transfer is cleaned up by the garbage collector", function()
  do http.open{url = base() .. "/sleep?s=2"} end
  T.eq(http.live(), 1)
  collectgarbage(); collectgarbage()
  T.eq(http.live(), 0)
end)

T.test("100 concurrent requests from 100 tasks", function()
  local tasks = {}
  for i = 1, 100 do
    tasks[i] = sched.spawn(function() return assert(http.post(base() .. "/echo", "n" .. i)).body end)
  end
  for i, t in ipairs(tasks) do T.eq(t:join(), "n" .. i) end
end)

T.test("HTTP/2 over TLS: insecure, ca_file, verification", function()
  local s = nghttpd()
  local url = "https://localhost:" .. s.tls.port .. "/hello.txt"
  local r = assert(http.get(url, {insecure = true}))
  T.eq({r.status, r.body, r.http_version}, {200, "hello h2\n", "2"})
  r = assert(http.get(url, {ca_file = s.cert, http_version = "2"}))
  T.eq(r.body, "hello h2\n")
  local _, err = http.get(url)
  T.match(err.message, "certificate")
end)

T.test("HTTP/2 cleartext: reuse, multiplexing, trailers", function()
  local s = nghttpd()
  local url = "http://127.0.0.1:" .. s.clear.port
  for _ = 1, 3 do   -- reusing a prior-knowledge connection (curl 7.88 needs a workaround)
    local r = assert(http.get(url .. "/hello.txt", {http_version = "2-prior-knowledge"}))
    T.eq({r.body, r.http_version, r.trailers["x-trailer"]}, {"hello h2\n", "2", "yes"})
  end
  local c0 = http.connects()
  local tasks = {}
  for i = 1, 100 do
    tasks[i] = sched.spawn(function()
      local path = i % 10 == 0 and "/big.bin" or "/hello.txt"
      return #assert(http.get(url .. path, {http_version = "2-prior-knowledge"})).body
    end)
  end
  for i, t in ipairs(tasks) do T.eq(t:join(), i % 10 == 0 and 3 * 1024 * 1024 or 9) end
  T.eq(http.connects() - c0, 0, "all streams went over the open connection")
  assert(http.get(url .. "/hello.txt", {http_version = "2-prior-knowledge", fresh_connect = true}))
  T.eq(http.connects() - c0, 1, "fresh_connect opened a connection")
end)

T.test("HTTP/2: paused streams, streamed upload", function()
  local s = nghttpd()
  local r = assert(http.request{url = "http://127.0.0.1:" .. s.clear.port .. "/big.bin", stream = true,
                                http_version = "2-prior-knowledge", body_limit = 64 * 1024})
  local total = 0
  for chunk in r:chunks() do total = total + #chunk; sched.sleep(0) end
  T.eq(total, 3 * 1024 * 1024)
  T.ok(r:stats().body_peak <= 64 * 1024 + 64 * 1024)
  local t = http.open{method = "POST", url = "https://127.0.0.1:" .. s.tls.port .. "/hello.txt", insecure = true,
                      body_stream = true}
  local sent = {}
  for i = 1, 16 do sent[i] = string.rep(tostring(i % 10), 128 * 1024); assert(t:write(sent[i])) end
  t:finish()
  local resp = assert(t:response())
  T.eq(resp.http_version, "2")
  T.ok(assert(resp:read_all()) == table.concat(sent), "nghttpd echoed the upload")
end)

local stop <close> = setmetatable({}, {__close = function()
  if srv then srv:stop() end
  if h2 then h2.tls:stop(); h2.clear:stop(); os.execute("rm -rf " .. servers.quote(h2.dir)) end
end})
T.run()
