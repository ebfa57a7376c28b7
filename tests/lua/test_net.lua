-- Tests of runbox.net (sockets on the event loop) and its C layer runbox.c.net.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local net = require "runbox.net"
local c = require "runbox.c.net"

-- A fresh path for a unix socket (os.tmpname makes a unique file; we only want its name).
local function tmp_path(name)
  local p = os.tmpname()
  os.remove(p)
  return p .. "-" .. name
end

-- A connected pair over TCP loopback: client, server-side socket, listener.
local function tcp_pair()
  local l = assert(net.listen{host = "127.0.0.1", port = 0})
  local accepted = sched.spawn(function() return assert(l:accept()) end)
  local client = assert(net.connect{host = "127.0.0.1", port = l.port})
  return client, accepted:join(), l
end

T.test("listen on an ephemeral port, connect, exchange lines", function()
  local before = T.open_fds()
  local client, server, l = tcp_pair()
  T.ok(l.port > 0, "bound port")
  T.eq(l.address, "127.0.0.1:" .. l.port)
  T.match(server.peer, "^127%.0%.0%.1:%d+$")
  T.ok(client:write("one\r\ntwo\nthree"))
  T.eq(server:read_line(), "one")
  T.eq(server:read_line(), "two")
  client:shutdown()
  T.eq(server:read_line(), "three", "last line without newline")
  T.eq(server:read_line(), nil, "end of stream")
  T.eq(server:read(), nil)
  client:close(); server:close(); l:close()
  T.eq(T.open_fds(), before, "no descriptor left open")
end)

T.test("read returns what is available, read_exactly waits for all", function()
  local client, server, l = tcp_pair()
  local writer = sched.spawn(function()
    for i = 1, 5 do client:write(tostring(i)); sched.sleep(0.01) end
    client:close()
  end)
  T.eq(server:read_exactly(3), "123")
  local data, err = server:read_exactly(10)
  T.eq(data, nil)
  T.eq(err.code, "eof")
  T.eq(err.partial, "45")
  writer:join()
  server:close(); l:close()
end)

T.test("read(max) hands out buffered data in pieces", function()
  local client, server, l = tcp_pair()
  client:write("abcdef\nrest")
  T.eq(server:read_line(), "abcdef")
  T.eq(server:read(2), "re")
  T.eq(server:read(10), "st")
  client:close(); server:close(); l:close()
end)

T.test("read_line refuses a line longer than its limit", function()
  local client, server, l = tcp_pair()
  client:write(string.rep("x", 100) .. "\nshort\n")
  local line, err = server:read_line(50)
  T.eq(line, nil)
  T.eq(err.code, "line_too_long")
  T.match(err.message, "longer than 50 bytes")
  local big = string.rep("y", 70000)
  local client2, server2, l2 = tcp_pair()
  client2:write(big .. "\n")
  local line2, err2 = server2:read_line()
  T.ok(line2 == nil, "default limit is 64 KiB")
  T.eq(err2.code, "line_too_long")
  T.ok(server2:read_line(80000) == big, "the refused line stays buffered: a larger limit reads it")
  for _, s in ipairs{client, server, l, client2, server2, l2} do s:close() end
end)

T.test("a line exactly at the limit is accepted, CRLF or LF", function()
  local client, server, l = tcp_pair()
  client:write(string.rep("a", 10) .. "\r\n" .. string.rep("b", 10) .. "\n")
  T.eq(server:read_line(10), string.rep("a", 10))
  T.eq(server:read_line(10), string.rep("b", 10))
  client:close(); server:close(); l:close()
end)

T.test("a large write parks until the reader catches up", function()
  local client, server, l = tcp_pair()
  local big = {}
  for i = 1, 100000 do big[i] = ("%07d\n"):format(i) end
  big = table.concat(big)     -- 800 kB: more than the socket buffers hold
  local reader = sched.spawn(function()
    local parts = {}
    while true do
      local d = server:read(4096)
      if not d then break end
      parts[#parts + 1] = d
      if #parts % 20 == 0 then sched.sleep(0) end
    end
    return table.concat(parts)
  end)
  T.ok(client:write(big))
  client:close()
  T.eq(#reader:join(), #big)
  T.ok(reader:join() == big, "same bytes")
  server:close(); l:close()
end)

T.test("timeouts on read, accept and connect give nil, err", function()
  local client, server, l = tcp_pair()
  server:set_timeout(0.1)
  local t0 = sched.now()
  local data, err = server:read()
  T.eq(data, nil)
  T.eq(err.code, "timeout")
  T.ok(sched.now() - t0 < 1, "took " .. (sched.now() - t0))
  T.match(err.message, "timed out after 0.1s")
  client:write("late\n")
  T.eq(server:read_line(), "late", "the socket still works after a timeout")
  -- an enclosing deadline that fires first is raised, not mistaken for the socket's timeout
  server:set_timeout(10)
  local ok, derr = pcall(sched.deadline, 0.05, server.read, server)
  T.eq(ok, false)
  T.eq(derr.code, "timeout")
  T.match(derr.message, "deadline of 0.05s")
  l:set_timeout(0.05)
  local s, aerr = l:accept()
  T.eq(s, nil)
  T.eq(aerr.code, "timeout")
  -- a unix listener with a full backlog makes connect wait
  local path = tmp_path("full.sock")
  local ul = assert(net.listen{unix = path, backlog = 0})
  local first = net.connect{unix = path, timeout = 1}
  local cs, cerr = net.connect{unix = path, timeout = 0.1}
  T.eq(cs, nil)
  T.eq(cerr.code, "timeout", cerr.message)
  T.ok(cerr.message:find(path, 1, true), "the error names the address")
  for _, x in ipairs{client, server, l, ul} do x:close() end
  if first then first:close() end
end)

T.test("connection refused is nil, err naming the address", function()
  local l = assert(net.listen{port = 0})
  local port = l.port
  l:close()
  local s, err = net.connect{host = "127.0.0.1", port = port}
  T.eq(s, nil)
  T.eq(err.code, "connect")
  T.match(err.message, "127%.0%.0%.1:" .. port)
  T.match(err.message, "refused")
  local s2, err2 = net.connect{unix = tmp_path("none.sock")}
  T.eq(s2, nil)
  T.match(err2.message, "none%.sock")
end)

T.test("localhost tries each resolved address", function()
  local l = assert(net.listen{host = "127.0.0.1", port = 0})
  local t = sched.spawn(function() local s = assert(l:accept()); s:write("hi\n"); s:close() end)
  local s = assert(net.connect{host = "localhost", port = l.port})
  T.eq(s:read_line(), "hi")
  t:join()
  s:close(); l:close()
end)

T.test("unix socket listener: stale file replaced, other files kept, file removed on close", function()
  local path = tmp_path("u.sock")
  local l = assert(net.listen{unix = path})
  T.eq(l.address, "unix:" .. path)
  local t = sched.spawn(function()
    local s = assert(l:accept())
    T.eq(s.peer, "unix:" .. path)
    s:write(assert(s:read_line()):upper() .. "\n")
    s:close()
  end)
  local s = assert(net.connect{unix = path})
  s:write("hello\n")
  T.eq(s:read_line(), "HELLO")
  t:join()
  s:close()
  -- a socket file left behind by a crashed process is replaced
  local fd = assert(c.listen_unix(path))
  c.close(fd)          -- the raw close leaves the file, like a crash would
  T.ok(io.open(path) == nil and select(3, io.open(path)) ~= 2, "socket file still there")
  l:close()
  local l2 = assert(net.listen{unix = path})
  l2:close()
  T.eq(select(3, io.open(path)), 2, "close removes the socket file")
  -- a regular file is never removed
  local f = io.open(path, "w"); f:write("keep"); f:close()
  local l3, err = net.listen{unix = path}
  T.eq(l3, nil)
  T.match(err.message, "not a socket")
  T.eq(io.open(path):read("a"), "keep")
  os.remove(path)
  local long, lerr = net.listen{unix = "/tmp/" .. string.rep("x", 200)}
  T.eq(long, nil)
  T.match(lerr.message, "1%.%.107 bytes")
end)

T.test("closing a socket wakes a task parked on it", function()
  local client, server, l = tcp_pair()
  local reader = sched.spawn(function() return server:read() end)
  sched.sleep(0.02)
  T.ok(server:close())
  T.ok(server:close(), "close is idempotent")
  local ok, data, err = reader:wait()
  T.ok(ok)
  T.eq(data, nil)
  T.eq(err.code, "closed")
  local w, werr = server:write("x")
  T.eq(w, nil)
  T.eq(werr.code, "closed")
  client:close(); l:close()
end)

T.test("a closed listener wakes its accept", function()
  local l = assert(net.listen{port = 0})
  local t = sched.spawn(function() return l:accept() end)
  sched.sleep(0.01)
  l:close()
  local ok, s, err = t:wait()
  T.ok(ok)
  T.eq(s, nil)
  T.eq(err.code, "closed")
end)

T.test("peer reset shows as a write error, not a crash", function()
  local client, server, l = tcp_pair()
  server:close()
  local ok, err
  for _ = 1, 100 do
    ok, err = client:write(string.rep("z", 65536))
    if not ok then break end
    sched.sleep(0.001)
  end
  T.eq(ok, nil)
  T.eq(err.code, "io")
  client:close(); l:close()
end)

T.test("pipe: data flows, end of stream when the writer closes", function()
  local before = T.open_fds()
  local r, w = net.pipe()
  local t = sched.spawn(function() w:write("through\nthe pipe\n"); w:close() end)
  T.eq(r:read_line(), "through")
  T.eq(r:read_line(), "the pipe")
  T.eq(r:read_line(), nil)
  t:join()
  r:close()
  T.eq(T.open_fds(), before)
  local rfd, wfd = c.pipe()
  T.eq(math.type(rfd), "integer")
  T.eq(c.read(rfd, 10), nil)
  T.eq(select(2, c.read(rfd, 10)), "again")
  T.eq(c.write(wfd, "abc", 1), 2, "offset skips bytes already written")
  T.eq(c.read(rfd, 10), "bc")
  c.close(wfd)
  T.eq(c.read(rfd, 10), "", "end of file")
  c.close(rfd)
end)

T.test("garbage-collected sockets close their descriptors", function()
  local before = T.open_fds()
  do
    local r, w = net.pipe()
    local l = net.listen{port = 0}
    r, w, l = nil, nil, nil
  end
  collectgarbage(); collectgarbage()
  T.eq(T.open_fds(), before)
end)

T.test("to-be-closed sockets close at scope end", function()
  local before = T.open_fds()
  do
    local r, w = net.pipe()
    local rc <close> = r
    local wc <close> = w
    wc:write("x")
  end
  T.eq(T.open_fds(), before)
end)

T.test("the C layer checks its arguments", function()
  T.raises("number expected", c.read, "x")
  T.raises("offset outside", c.write, 0, "abc", 5)
  T.raises("port must be", c.listen_tcp, "127.0.0.1", 70000)
  T.raises("not a file descriptor", c.close, -1)
  T.raises("max must be", c.read, 0, 0)
  T.raises("positive integer", function() local r = net.pipe(); r:read(0) end)
  T.raises("expected a table", net.listen, "127.0.0.1")
  T.raises("port must be an integer", net.connect, {host = "127.0.0.1", port = "80"})
end)

T.test("listen fails clearly on a port in use and a bad host", function()
  local l = assert(net.listen{port = 0})
  -- SO_REUSEADDR does not allow two listeners on one port
  local l2, err = net.listen{port = l.port}
  T.eq(l2, nil)
  T.match(err.message, "cannot listen on 127%.0%.0%.1:" .. l.port)
  local l3, err3 = net.listen{host = "999.1.1.1", port = 0}
  T.eq(l3, nil)
  T.match(err3.message, "999%.1%.1%.1")
  l:close()
end)

T.test("many connections at once", function()
  local before = T.open_fds()
  local l = assert(net.listen{port = 0})
  local server = sched.spawn(function()
    sched.scope(function(scope)
      for _ = 1, 100 do
        local s = assert(l:accept())
        scope:spawn(function() local line = s:read_line(); s:write(line .. "!\n"); s:close() end)
      end
    end)
  end)
  local clients = {}
  for i = 1, 100 do
    clients[i] = sched.spawn(function()
      local s = assert(net.connect{host = "127.0.0.1", port = l.port})
      s:write("c" .. i .. "\n")
      local r = s:read_line()
      s:close()
      return r
    end)
  end
  for i, t in ipairs(clients) do T.eq(t:join(), "c" .. i .. "!") end
  server:join()
  l:close()
  T.eq(T.open_fds(), before)
end)

T.run()
