local T = require "runbox.testing"
local log = require "runbox.log"
local clog = require "runbox.c.log"
local proc = require "runbox.proc"
local sched = require "runbox.sched"
local fs = require "runbox.fs"

local tmp = assert(proc.run{"mktemp", "-d", "/tmp/runbox-test-log.XXXXXX"}).stdout:gsub("\n$", "")

local function lines_of(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- Pipes the stdout of cmd into a fresh file sink; returns the file's content and the handle.
local function capture(cmd, sink_opts, pipe_opts)
  local path = tmp .. "/cap-" .. math.random(1 << 30) .. ".log"
  local o = {file = path}
  for k, v in pairs(sink_opts or {}) do o[k] = v end
  local s = assert(log.sink(o))
  local p = assert(proc.spawn(cmd))
  local h = log.pipe(p, "stdout", s, pipe_opts)
  local bytes, lines = h:wait()
  T.ok(bytes, tostring(lines))
  p:wait()
  p:close()
  s:close()
  return assert(fs.read(path)), h, bytes, lines
end

-- A process printing what runbox -e CODE prints; returns its {stdout, stderr}.
local function child(code, env)
  return assert(proc.run{T.runbox_bin(), "-e", code, env = env})
end

T.test("lines of a process are copied exactly (10 MB, binary, long and short lines)", function()
  local bytes = {}
  for i = 1, 65536 do
    local b = math.random(0, 254)
    bytes[i] = string.char(b >= 10 and b + 1 or b)   -- every byte value but the newline
  end
  local pool = table.concat(bytes):rep(6)
  local parts, total, n = {}, 0, 0
  while total < 10 * 1000 * 1000 do
    local len = math.random(1, 100) == 1 and math.random(10000, 300000) or math.random(0, 200)
    local off = math.random(1, #pool - len)
    parts[#parts + 1] = pool:sub(off, off + len - 1) .. "\n"
    total = total + len + 1
    n = n + 1
  end
  local data = table.concat(parts)
  assert(fs.write(tmp .. "/big.in", data))
  local got, h, nbytes, nlines = capture{"cat", tmp .. "/big.in"}
  T.eq(#got, #data)
  T.ok(got == data, "content differs")
  T.eq(nbytes, #data)
  T.eq(nlines, n)
  T.ok(#h:last_line() <= 4096, "last_line is capped")
end)

T.test("an unterminated last line is written as a line", function()
  local got, h, bytes, lines = capture{"printf", "one\\ntwo\\nthree"}
  T.eq(got, "one\ntwo\nthree\n")
  T.eq(bytes, 13)
  T.eq(lines, 3)
  T.eq(h:last_line(), "three")
end)

T.test("an empty stream writes nothing", function()
  local got, _, bytes, lines = capture{"true"}
  T.eq(got, "")
  T.eq(bytes, 0)
  T.eq(lines, 0)
end)

T.test("very long lines are cut with a marker and nothing is lost", function()
  local long = ("0123456789"):rep(250)            -- 2500 bytes
  assert(fs.write(tmp .. "/long.in", "short\n" .. long .. "\nafter\n" .. long))
  local got = capture({"cat", tmp .. "/long.in"}, nil, {max_line = 1000})
  local ls = lines_of(got)
  T.eq(#ls, 8)
  T.eq(ls[1], "short")
  T.eq(ls[2], long:sub(1, 1000) .. " [runbox: line cut]")
  T.eq(ls[3], long:sub(1001, 2000) .. " [runbox: line cut]")
  T.eq(ls[4], long:sub(2001))
  T.eq(ls[5], "after")
  T.eq(ls[8], long:sub(2001))
  -- the default limit is 1 MiB
  assert(fs.write(tmp .. "/long2.in", ("y"):rep(3 * 1024 * 1024) .. "\nend\n"))
  local got2, _, _, lines = capture{"cat", tmp .. "/long2.in"}
  local ls2 = lines_of(got2)
  T.eq(lines, 4)
  T.eq(#ls2[1], 1024 * 1024 + #" [runbox: line cut]")
  T.eq(ls2[3], ("y"):rep(1024 * 1024), "a line of exactly the limit is not cut")
  T.eq(ls2[4], "end")
end)

T.test("a secret split across two writes of the process is still redacted", function()
  T.ok(log.redact("SPLITSECRET-0123456789"))
  local got = capture{"bash", "-c", "printf 'key: SPLITSEC'; sleep 0.2; printf 'RET-0123456789 ok\\nSPLITSECRET-0123456789'"}
  T.eq(got, "key: *** ok\n***\n")
end)

T.test("a secret is not split by cutting a long line", function()
  T.ok(log.redact("CUTSECRET-abcdefgh"))
  local pad = ("p"):rep(95)
  local got = capture({"printf", pad .. "CUTSECRET-abcdefgh" .. pad}, nil, {max_line = 100})
  T.ok(not got:find("CUTSECRET", 1, true), got)
  T.ok(not got:find("abcdefgh", 1, true), got)
  T.match(got, "%*%*%*")
end)

T.test("secrets are redacted in log.info output, prefixed lines and tails", function()
  local r = child([[
    local log = require "runbox.log"
    log.redact("sk-live-SECRET-42")
    log.info("calling with key %s now", "sk-live-SECRET-42")
    local s = log.sink{console = true, prefix = "[run-7] "}
    s:warn("again sk-live-SECRET-42")
    s:line("raw sk-live-SECRET-42 raw")
  ]])
  T.eq(r.code, 0, r.stderr)
  T.ok(not r.stderr:find("SECRET", 1, true), r.stderr)
  T.match(r.stderr, "INFO  calling with key %*%*%* now\n")
  T.match(r.stderr, "%[run%-7%] WARN  again %*%*%*\n")
  T.match(r.stderr, "%[run%-7%] raw %*%*%* raw\n")

  T.ok(log.redact("PREFIXSECRET-xyz"))
  local got, h = capture({"printf", "a PREFIXSECRET-xyz b\\nPREFIXSECRET-xyzPREFIXSECRET-xyz\\n"},
                         {file_prefix = "[p] "}, {keep = 5})
  T.eq(got, "[p] a *** b\n[p] ******\n")
  T.eq(h:tail(), {"a *** b", "******"})
  T.eq(log.scrub("x PREFIXSECRET-xyz"), "x ***")
end)

T.test("overlapping secrets are masked together", function()
  T.ok(log.redact("OVERLAP-abcdef"))
  T.ok(log.redact("abcdef-TAIL-99"))
  T.eq(log.scrub("[OVERLAP-abcdef-TAIL-99]"), "[***]")
end)

T.test("short or missing secrets are refused", function()
  T.eq(log.redact(nil), false)
  T.eq(log.redact(""), false)
  local n = clog.secret_count()
  local ok, err = clog.redact("abc")
  T.eq(ok, nil)
  T.match(err, "shorter than 6 bytes")
  T.eq(clog.secret_count(), n)
  -- a multi-line secret registers each long enough line
  T.ok(log.redact("LINE-ONE-secret\nshort\nLINE-TWO-secret\n"))
  T.eq(log.scrub("LINE-ONE-secret short LINE-TWO-secret"), "*** short ***")
end)

T.test("prefix on every line, colour only where asked", function()
  local got = capture({"printf", "a\\n\\nb\\nc"}, {file_prefix = "[x] "})
  T.eq(got, "[x] a\n[x] \n[x] b\n[x] c\n")
  local path = tmp .. "/colour.log"
  local c = assert(clog.open(path, {prefix = "[c] ", color = "cyan", force_color = true}))
  local plain = assert(clog.open(path, {prefix = "[n] ", color = "cyan"}))   -- not a terminal
  assert(clog.write(c, "one\ntwo"))
  assert(clog.write(plain, "three"))
  c:close(); plain:close()
  T.eq(assert(fs.read(path)), "\27[36m[c] \27[0mone\n\27[36m[c] \27[0mtwo\n[n] three\n")
  T.raises("unknown color", clog.open, path, {color = "mauve"})
  local bare = assert(clog.open(path))          -- options are optional
  assert(clog.write({bare, bare}, "twice"))
  bare:close()
  T.eq(assert(fs.read(path)):sub(-12), "twice\ntwice\n")
end)

T.test("20 concurrent streams: shared file has whole lines, own files are exact", function()
  local N, LINES = 20, 1500
  -- line j of stream i; every 300th line is long so writes span many pipe buffers
  local gen = [[
    local i, n = tonumber(arg[1]), tonumber(arg[2])
    for j = 1, n do
      local len = (j %% 300 == 0) and 70000 + i or (i * 7 + j * 13) %% 200
      io.write("stream ", i, " line ", j, " ", ("%s"):rep(len), "\n")
    end
  ]]
  local function expected(i)
    local t = {}
    for j = 1, LINES do
      local len = (j % 300 == 0) and 70000 + i or (i * 7 + j * 13) % 200
      t[j] = ("stream %d line %d %s\n"):format(i, j, (string.char(97 + i % 26)):rep(len))
    end
    return table.concat(t)
  end
  local shared_path = tmp .. "/shared/all.log"
  local shared = assert(log.sink{file = shared_path})
  local procs, handles, own = {}, {}, {}
  for i = 1, N do
    own[i] = assert(log.sink{file = ("%s/runs/%d/agent.log"):format(tmp, i)})
    local prefixed = assert(log.sink{file = shared_path, file_prefix = ("[%d] "):format(i)})
    local code = gen:format(string.char(97 + i % 26))
    procs[i] = assert(proc.spawn{T.runbox_bin(), "-e", code, tostring(i), tostring(LINES)})
    handles[i] = log.pipe(procs[i], "stdout", {own[i], prefixed})
    own[i].shared = prefixed
  end
  for i = 1, N do
    local bytes, lines = handles[i]:wait()
    T.eq(lines, LINES, "stream " .. i)
    T.ok(bytes > 0)
    procs[i]:wait(); procs[i]:close()
    own[i]:close(); own[i].shared:close()
  end
  shared:close()
  for i = 1, N do
    T.ok(assert(fs.read(("%s/runs/%d/agent.log"):format(tmp, i))) == expected(i), "own file of stream " .. i)
  end
  local next_line, count = {}, 0
  for line in assert(fs.read(shared_path)):gmatch("([^\n]*)\n") do
    count = count + 1
    local p, s, j, x = line:match("^%[(%d+)%] stream (%d+) line (%d+) (%a*)$")
    T.ok(p and p == s, "not a whole line of one stream: " .. line:sub(1, 80))
    local i = tonumber(s)
    j = tonumber(j)
    T.eq(j, (next_line[i] or 0) + 1, "order in stream " .. i)
    next_line[i] = j
    local len = (j % 300 == 0) and 70000 + i or (i * 7 + j * 13) % 200
    T.eq(#x, len, "line length")
  end
  T.eq(count, N * LINES)
end, {timeout = 60})

T.test("levels are filtered", function()
  local path = tmp .. "/levels.log"
  local s = assert(log.sink{file = path})
  local old = log.level()
  log.set_level("warn")
  s:debug("d"); s:info("i"); s:warn("w %d", 1); s:error("e")
  log.set_level("debug")
  s:debug("d2")
  log.set_level(old)
  local own = assert(log.sink{file = path, level = "error"})
  own:warn("w2"); own:error("e2")
  own:close()
  s:close()
  local ls = lines_of(assert(fs.read(path)))
  T.eq(#ls, 4)
  T.match(ls[1], "^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d WARN  w 1$")
  T.match(ls[2], " ERROR e$")
  T.match(ls[3], " DEBUG d2$")
  T.match(ls[4], " ERROR e2$")
  T.raises("unknown level", log.set_level, "loud")
  -- the environment sets the level of a fresh process; a bad value is reported
  local r = child([[local log = require "runbox.log"; log.debug("dbg"); log.info("inf")]], {RUNBOX_LOG_LEVEL = "debug"})
  T.match(r.stderr, "DEBUG dbg\nINFO  inf\n")
  r = child([[local log = require "runbox.log"; log.info("inf")]], {RUNBOX_LOG_LEVEL = "loud"})
  T.match(r.stderr, "RUNBOX_LOG_LEVEL=loud is not a level")
  T.match(r.stderr, "INFO  inf")
  r = child([[local log = require "runbox.log"; log.info("inf")]], {RUNBOX_LOG_TIME = "1"})
  T.match(r.stderr, "^%d%d:%d%d:%d%d%.%d%d%d INFO  inf\n")
end)

T.test("a sink in a folder that does not exist yet creates the folder", function()
  local path = tmp .. "/new/deeper/still/run.log"
  local s = assert(log.sink{file = path})
  s:line("hello")
  s:close()
  T.eq(assert(fs.read(path)), "hello\n")
end)

T.test("a sink to an unwritable path gives nil, err naming the path", function()
  assert(fs.write(tmp .. "/afile", "x"))
  local s, err = log.sink{file = tmp .. "/afile/sub/run.log"}
  T.eq(s, nil)
  T.match(err.message, tmp:gsub("%p", "%%%0") .. "/afile/sub/run%.log")
  T.eq(err.path, tmp .. "/afile/sub/run.log")
  s, err = log.sink{file = tmp}
  T.eq(s, nil)
  T.match(err.message, "cannot open log file .*Is a directory")
  T.raises("file must be a path", log.sink, {file = 3})
  T.raises("console must be", log.sink, {console = "tty"})
end)

T.test("a sink that cannot be written reports it and the stream is still drained", function()
  local s = assert(log.sink{file = "/dev/full"})
  local p = assert(proc.spawn{"head", "-c", "3000000", "/dev/zero"})
  local h = log.pipe(p, "stdout", s)
  local bytes, err = h:wait()
  T.eq(bytes, nil)
  T.match(err.message, "writing log /dev/full: No space left on device")
  T.eq(err.bytes, 3000000)
  T.eq(p:wait(), 0)
  p:close()
  local ok, werr = s:info("x")
  T.eq(ok, nil)
  T.match(werr.message, "/dev/full")
  s:close()
end)

T.test("tail keeps the last lines, last_line shows what a terminal would", function()
  local _, h = capture({"printf", "1\\n2\\n3\\n4\\nprogress 10%%\\rprogress 90%%\\r\\n"}, nil, {keep = 3})
  T.eq(h:tail(), {"3", "4", "progress 10%\rprogress 90%\r"})
  T.eq(h:last_line(), "progress 90%")
  local _, h2 = capture({"printf", "only\\n"})
  T.eq(h2:tail(), {})
  T.eq(h2:last_line(), "only")
end)

T.test("pipe_fd copies any non-blocking fd; stderr can be piped too", function()
  local path = tmp .. "/fd.log"
  local s = assert(log.sink{file = path})
  local p = assert(proc.spawn{"bash", "-c", "echo out; echo err >&2"})
  local h1 = log.pipe_fd(p._c:fd("stdout"), s)
  local h2 = log.pipe(p, "stderr", s)
  T.eq(h1:wait(), 4)
  T.eq(h2:wait(), 4)
  p:wait(); p:close(); s:close()
  local got = assert(fs.read(path))
  T.ok(got == "out\nerr\n" or got == "err\nout\n", got)
  local q <close> = assert(proc.spawn{"true", stdout = "null"})
  T.raises("not a pipe", log.pipe, q, "stdout", s)
end)

T.test("a process that is not an OS process (a remote exec with p:read) is piped alike", function()
  local path = tmp .. "/remote.log"
  local s = assert(log.sink{file = path})
  -- chunks as a remote exec delivers them: lines split anywhere, a secret across two chunks, 2 MB
  local big = ("x"):rep(999) .. "\n"
  local chunks = {"first li", "ne\nsecond sk-remote-", "secret-42 end\n"}
  for _ = 1, 2000 do chunks[#chunks + 1] = big end
  chunks[#chunks + 1] = "last, unterminated"
  log.redact("sk-remote-secret-42")
  local i = 0
  local fake = {name = "remote", read = function(_, stream)
    assert(stream == "stdout")
    i = i + 1
    if i % 50 == 0 then sched.sleep(0) end
    return chunks[i]
  end}
  local h = log.pipe(fake, "stdout", s, {keep = 2})
  local bytes, lines = h:wait()
  s:close()
  local got = assert(fs.read(path))
  T.eq(lines, 2003)
  T.eq(bytes, #table.concat(chunks))          -- bytes read (the file has the secret masked)
  T.match(got, "^first line\nsecond %*%*%* end\n")
  T.match(got, "\nlast, unterminated\n$")
  T.eq(h:last_line(), "last, unterminated")
  T.raises("expected a process", log.pipe, {}, "stdout", s)
end)

T.test("cancelling a pipe writes the pending partial line", function()
  local path = tmp .. "/cancel.log"
  local s = assert(log.sink{file = path})
  local p = assert(proc.spawn{"bash", "-c", "printf 'whole\\npartial'; sleep 30"})
  local h = log.pipe(p, "stdout", s)
  sched.sleep(0.2)
  h:cancel()
  local ok = h:wait()
  T.eq(ok, nil)
  p:close(); s:close()
  T.eq(assert(fs.read(path)), "whole\npartial\n")
end)

T.test("closing the process while piping ends the pipe cleanly", function()
  local path = tmp .. "/closed.log"
  local s = assert(log.sink{file = path})
  local p = assert(proc.spawn{"bash", "-c", "echo first; sleep 30"})
  local h = log.pipe(p, "stdout", s)
  sched.sleep(0.2)
  p:close()
  T.eq(h:wait(), 6)
  s:close()
  T.eq(assert(fs.read(path)), "first\n")
end)

T.test("cleanup", function() proc.run{"rm", "-rf", tmp} end)

T.run()
