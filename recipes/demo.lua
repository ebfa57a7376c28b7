-- runbox demo: the engine's primitives working together on one event loop.
--   runbox demo [--keep]     (--keep: leave the scratch folder for a look)
-- Each step checks its own result; the recipe exits 1 if any check fails.
local sched = require "runbox.sched"
local proc = require "runbox.proc"
local http = require "runbox.http"
local httpd = require "runbox.httpd"
local tar = require "runbox.tar"
local pb = require "runbox.pb"
local json = require "runbox.json"
local fs = require "runbox.fs"
local log = require "runbox.log"
local util = require "runbox.util"

local args = {...}
if args[1] == "--help" or args[1] == "-h" then
  print("usage: runbox demo [--keep]\n\nRuns processes, an HTTP server and client, tar, protobuf and JSON together.")
  return
end
for _, a in ipairs(args) do
  if a ~= "--keep" then
    io.stderr:write("runbox demo: unknown flag '", a, "' (see runbox demo --help)\n")
    os.exit(2)
  end
end
local keep = args[1] == "--keep"

local results, failures = {}, 0
local function step(name, fn)
  local t0 = sched.now()
  local ok, detail = pcall(fn)
  local ms = (sched.now() - t0) * 1000
  if not ok then failures = failures + 1 end
  results[#results + 1] = {step = name, ok = ok, ms = math.floor(ms + 0.5), detail = tostring(detail)}
  log.info("%s %-34s %7.1f ms  %s", ok and "ok  " or "FAIL", name, ms, tostring(detail))
end

local scratch = assert(fs.temp_dir("runbox-demo-"))
local cleanup <close> = setmetatable({}, {__close = function()
  if not keep then fs.remove_tree(scratch) end
end})

-- 1. processes: 8 at once, at most 4 running, each with a time limit
step("8 processes, 4 at a time", function()
  local sem, squares = sched.semaphore(4), {}
  sched.scope(function(s)
    for i = 1, 8 do
      s:spawn(function()
        sem:with(function()
          local r = assert(proc.run{"sh", "-c", "sleep 0.1; echo $((" .. i .. " * " .. i .. "))", timeout = 5})
          squares[i] = tonumber(r.stdout)
        end)
      end)
    end
  end)
  for i = 1, 8 do assert(squares[i] == i * i, "wrong square for " .. i) end
  return "squares 1..64 in two waves"
end)

-- 2. an HTTP server on the same loop, and 50 concurrent client requests
local srv = assert(httpd.serve({host = "127.0.0.1", port = 0}, httpd.router{
  ["GET /square/:n"] = function(req, res)
    local n = tonumber(req.params.n)
    res:header("content-type", "application/json"):send(json.encode{n = n, square = n * n})
  end,
  ["GET /events"] = function(req, res)
    for i = 1, 3 do
      res:sse{event = "tick", id = tostring(i), data = "tick " .. i}
      sched.sleep(0.01)
    end
    res:finish()
  end,
}))
local server_guard <close> = srv

step("50 concurrent HTTP requests", function()
  local ts = {}
  for i = 1, 50 do
    ts[i] = sched.spawn(function()
      local resp = assert(http.get(srv.url .. "/square/" .. i, {timeout = 10}))
      return json.decode(resp.body).square
    end)
  end
  for i, r in ipairs(sched.wait_all(ts)) do assert(r[1] and r[2] == i * i, tostring(r[2])) end
  return "served by runbox.httpd on port " .. srv.port
end)

step("server-sent events, streamed", function()
  local resp = assert(http.request{url = srv.url .. "/events", stream = true, timeout = 10})
  local events = {}
  for line in resp:lines() do
    local data = line:match("^data: (.*)")
    if data then events[#events + 1] = data end
  end
  assert(#events == 3 and events[3] == "tick 3", "got " .. #events .. " events")
  return table.concat(events, ", ")
end)

-- 3. tar: pack a tree to a gzip string, list it, unpack it elsewhere, compare every file
step("tar round trip", function()
  local src = scratch .. "/src"
  for i = 1, 20 do
    assert(fs.mkdir_p(src .. "/pkg" .. (i % 4)))
    assert(fs.write(("%s/pkg%d/file%02d.txt"):format(src, i % 4, i), ("line %d\n"):format(i):rep(i * 10)))
  end
  local archive = assert(tar.pack(src, {exclude = {"file01.txt"}}))
  local entries = assert(tar.list_string(archive))
  assert(tar.unpack_string(archive, assert(fs.mkdir_p(scratch .. "/copy")) and scratch .. "/copy"))
  local files = 0
  for _, e in ipairs(assert(fs.walk(src))) do
    if e.type == "file" and not e.path:find("file01") then
      files = files + 1
      assert(util.sha256_file(src .. "/" .. e.path) == util.sha256_file(scratch .. "/copy/" .. e.path), e.path)
    end
  end
  assert(not fs.exists(scratch .. "/copy/pkg1/file01.txt"), "exclude pattern ignored")
  return ("%d entries, %d bytes gzip, %d files identical"):format(#entries, #archive, files)
end)

-- 4. protobuf: a schema in Lua, encode and decode
step("protobuf encode/decode", function()
  local S = pb.schema{
    Status = pb.enum{STATUS_UNSPECIFIED = 0, STATUS_OK = 1, STATUS_FAILED = 2},
    Step = {{1, "name", "string"}, {2, "millis", "uint32"}, {3, "status", "Status"}},
    Report = {{1, "steps", "Step", repeated = true}, {2, "labels", "map", key = "string", value = "string"}},
  }
  local report = {steps = {}, labels = {host = util.hostname()}}
  for _, r in ipairs(results) do
    report.steps[#report.steps + 1] = {name = r.step, millis = r.ms, status = r.ok and "STATUS_OK" or "STATUS_FAILED"}
  end
  local bytes = pb.encode(S.Report, report)
  local back = assert(pb.decode(S.Report, bytes))
  assert(#back.steps == #report.steps and back.steps[1].name == report.steps[1].name)
  return ("%d steps in %d bytes"):format(#back.steps, #bytes)
end)

-- 5. a summary people can read, written atomically
local summary_path = scratch .. "/summary.json"
step("JSON summary", function()
  assert(json.encode_file(summary_path, {runbox = "demo", at = util.iso8601(), steps = results}, {pretty = true}))
  local back = assert(json.decode_file(summary_path))
  assert(#back.steps == #results)
  return keep and summary_path or "written and read back"
end)

print(("\n%d steps, %d failed%s"):format(#results, failures, keep and ("; files in " .. scratch) or ""))
if failures > 0 then os.exit(1) end
