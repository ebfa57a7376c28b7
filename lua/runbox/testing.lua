-- A small test library for runbox's own tests and for recipe authors' tests.
--
--   local T = require "runbox.testing"
--   T.test("adds", function() T.eq(1 + 1, 2) end)
--   T.run()     -- TAP lines "ok N - name" / "not ok N - name"; exits 1 if any failed
--
-- Each test runs in its own task under a deadline (T.timeout seconds, default 60), so a hang is a
-- failure, not a stuck suite. RUNBOX_TEST_FILTER=pattern runs only matching tests.
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local fs = require "runbox.fs"

local M = {timeout = 60}
local tests = {}

function M.test(name, fn, opts)
  tests[#tests + 1] = {name = name, fn = fn, timeout = opts and opts.timeout}
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local ok, json = pcall(require, "runbox.json")
  if ok and json.encode then
    local ok2, s = pcall(json.encode, v)
    if ok2 then return s end
  end
  return tostring(v)
end

local function fail(msg, level)
  error(msg, (level or 1) + 2)
end

-- Deep equality for tables (keys and values), plain == otherwise.
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
M.same = same

function M.ok(cond, msg)
  if not cond then fail("expected a true value" .. (msg and (": " .. msg) or "")) end
  return cond
end

function M.eq(got, want, msg)
  if not same(got, want) then
    fail(("%sexpected %s, got %s"):format(msg and (msg .. ": ") or "", show(want), show(got)))
  end
end

function M.ne(got, other, msg)
  if same(got, other) then fail(("%sexpected something other than %s"):format(msg and (msg .. ": ") or "", show(other))) end
end

function M.match(s, pattern, msg)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(("%sexpected a string matching %q, got %s"):format(msg and (msg .. ": ") or "", pattern, show(s)))
  end
end

-- Expects fn(...) to raise; checks the message against pattern if given; returns the error.
function M.raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then fail("expected an error" .. (pattern and (" matching " .. pattern) or "")) end
  if pattern and not errors.message(err):find(pattern) then
    fail(("expected an error matching %q, got %q"):format(pattern, errors.message(err)))
  end
  return err
end

-- Runs every registered test; prints TAP; exits with 1 when any failed.
function M.run()
  local filter = os.getenv("RUNBOX_TEST_FILTER")
  local passed, failed, n = 0, 0, 0
  local file = arg and arg[0] or "?"
  print(("# %s"):format(file))
  for _, t in ipairs(tests) do
    if not filter or t.name:find(filter) then
      n = n + 1
      local task = sched.spawn(function() return sched.deadline(t.timeout or M.timeout, t.fn) end)
      task.name = t.name
      local ok, err = task:wait()
      if ok then
        passed = passed + 1
        print(("ok %d - %s"):format(n, t.name))
      else
        failed = failed + 1
        print(("not ok %d - %s"):format(n, t.name))
        local msg = task.traceback or errors.message(err)
        for line in tostring(msg):gmatch("[^\n]+") do print("#   " .. line) end
      end
    end
  end
  print(("1..%d"):format(n))
  print(("# %s: %d passed, %d failed"):format(file, passed, failed))
  if failed > 0 then os.exit(1) end
end

---------------------------------------------------------------------------------------------------
-- Helpers for tests that start processes, count descriptors or need scratch files.

-- The runbox binary for child processes: $RUNBOX_BIN (made absolute against $PWD, so it still
-- works when the child runs elsewhere), else the binary running this test.
function M.runbox_bin()
  local bin = os.getenv("RUNBOX_BIN")
  if bin and bin ~= "" then
    if bin:sub(1, 1) ~= "/" then bin = (os.getenv("PWD") or assert(fs.realpath("."))) .. "/" .. bin end
    return bin
  end
  return assert(fs.readlink("/proc/self/exe"))
end

-- Runs a line of Lua in a second runbox process (`runbox -e code`); opts are runbox.proc options
-- (env, cwd, timeout: default 30 s). Returns proc.run's result {code, stdout, stderr, ...}.
function M.run_code(code, opts)
  local cmd = {M.runbox_bin(), "-e", code, timeout = 30}
  for k, v in pairs(opts or {}) do cmd[k] = v end
  return assert(require("runbox.proc").run(cmd))
end

-- True while the process exists and is not a zombie (an exited child nobody reaped yet).
function M.pid_alive(pid)
  local n = math.tointeger(tonumber(pid))
  if not n or n <= 0 then
    error(("bad argument #1 to 'pid_alive' (pid expected, got %s)"):format(show(pid)), 2)
  end
  local stat = fs.read("/proc/" .. n .. "/stat")
  -- the state letter follows the command name, which is in parentheses and may contain ')'
  return stat ~= nil and stat:match("^.*%) (%a)") ~= "Z"
end

-- Number of open descriptors of this process. Collects garbage first, so sockets and files that
-- are no longer referenced are closed (and not counted) by their finalizers.
function M.open_fds()
  collectgarbage(); collectgarbage()
  local names = assert(fs.list("/proc/self/fd"))
  -- the listing's own descriptor is closed by now: only the names that still resolve count
  local n = 0
  for _, name in ipairs(names) do
    if fs.readlink("/proc/self/fd/" .. name) then n = n + 1 end
  end
  return n
end

-- The test file's name without ".lua" ("test_fs"), a default prefix for temp dirs; "runbox-test"
-- when not run from a .lua file (runbox -e).
local function script_name()
  local file = arg and type(arg[0]) == "string" and arg[0] or ""
  return file:match("([%w_][%w_.-]*)%.lua$") or "runbox-test"
end

-- A test function calling fn(dir) with a fresh private temp dir (fs.temp_dir(prefix), prefix the
-- test file's name by default), removed afterwards also when fn fails. The dir is made writable
-- again first, in case the test took permissions away. A failure of fn wins over one of removal.
function M.with_temp_dir(fn, prefix)
  if type(fn) ~= "function" then error("bad argument #1 to 'with_temp_dir' (function expected)", 2) end
  prefix = prefix or script_name()
  return function()
    local dir = assert(fs.temp_dir(prefix))
    local ok, err = pcall(fn, dir)
    fs.chmod(dir, "700")
    local removed, rerr = fs.remove_tree(dir)
    if not ok then error(err, 0) end
    if not removed then error(rerr, 0) end
  end
end

return M
