-- Starting and stopping test servers from Lua tests (HTTP and gRPC tests).
--
--   local servers = dofile(root .. "/tests/helpers/servers.lua")
--   local srv <close> = servers.start{"/usr/bin/python3", root .. "/tests/helpers/http_server.py",
--                                     "--port-file", "{portfile}", "--parent", "{parent}"}
--   -- srv.port, srv:stop() (also on scope exit)
--
-- "{portfile}" and "{parent}" in the command are replaced by a fresh file the server writes its
-- port to once listening, and this process's pid (so the server can exit when the test dies).
local sched = require "runbox.sched"
local fs = require "runbox.fs"
local T = require "runbox.testing"

local M = {}

M.root = (arg and arg[0] and arg[0]:match("^(.*)/tests/lua/[^/]*$")) or os.getenv("RUNBOX_SOURCE") or "."

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function M.pid()
  return tonumber(assert(fs.read("/proc/self/stat")):match("^(%d+)"))
end

local Server = {}
Server.__index = Server
Server.__close = function(s) s:stop() end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  for _ = 1, 150 do
    if not T.pid_alive(self.pid) then break end
    sched.sleep(0.02)
  end
  if T.pid_alive(self.pid) then os.execute("kill -9 " .. self.pid .. " 2>/dev/null") end
  os.remove(self.portfile); os.remove(self.pidfile); os.remove(self.logfile)
end

function Server:log() return fs.read(self.logfile) or "" end

-- Starts argv in the background and waits until it wrote its port file.
function M.start(argv)
  local base = os.tmpname()
  os.remove(base)
  local s = setmetatable({portfile = base .. ".port", pidfile = base .. ".pid", logfile = base .. ".log"}, Server)
  local words = {}
  for i, a in ipairs(argv) do
    words[i] = quote((a:gsub("{portfile}", s.portfile):gsub("{parent}", tostring(M.pid()))))
  end
  os.execute(("%s >%s 2>&1 & echo $! >%s"):format(table.concat(words, " "), quote(s.logfile), quote(s.pidfile)))
  s.pid = tonumber((fs.read(s.pidfile)))
  for _ = 1, 750 do
    local port = fs.read(s.portfile)
    if port and port ~= "" then
      s.port = tonumber(port) or port
      return s
    end
    if not T.pid_alive(s.pid) then break end
    sched.sleep(0.02)
  end
  local log = s:log()
  s:stop()
  error("test server did not start: " .. table.concat(argv, " ") .. "\n" .. log, 2)
end

-- A scratch directory removed by the returned closer.
function M.tempdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. quote(d)))
  return d, setmetatable({}, {__close = function() os.execute("rm -rf " .. quote(d)) end})
end

M.quote = quote

return M
