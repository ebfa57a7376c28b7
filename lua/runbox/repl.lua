-- `runbox repl`: an interactive Lua prompt with every runbox module loaded.
--
-- The prompt never blocks the event loop: the REPL task parks on stdin with sched.wait_fd and
-- feeds the keys to libedit (runbox.c.repl), so tasks started at the prompt keep running while
-- the user types. Each entered chunk runs in its own task and the REPL waits for it, so blocking
-- calls (sched.sleep, proc.run, http.get) work at the prompt. Ctrl-C cancels the running line, or
-- clears the input at the prompt. Without a terminal on stdin it reads plain lines (pipes, files).
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local crepl = require "runbox.c.repl"

local M = {}

M.PROMPT, M.CONTINUE = "> ", ">> "
M.HISTORY_SIZE = 1000
M.MODULES = {"sched", "proc", "http", "grpc", "pb", "tar", "json", "yaml", "fs", "log", "util",
             "net", "httpd", "errors"}

local pack, unpack = table.pack, table.unpack

---------------------------------------------------------------------------------------------------
-- pretty printing

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or repeat
            return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function quote(s)
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

local type_rank = {number = 1, string = 2, boolean = 3}

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (type_rank[ta] or 9) < (type_rank[tb] or 9) or
                          (type_rank[ta] == type_rank[tb] and ta < tb) end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local render

local function render_key(k, opts, depth, path)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not keywords[k] then return k end
  return "[" .. render(k, opts, depth, path) .. "]"
end

-- The items of table t as strings: the sequence part without keys, then the other keys sorted.
local function table_items(t, opts, depth, path)
  local items, n = {}, 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_less)
  local total = n + #keys
  local shown = math.min(total, opts.max_items)
  for i = 1, math.min(n, shown) do items[#items + 1] = render(rawget(t, i), opts, depth + 1, path) end
  for i = 1, shown - n do
    local k = keys[i]
    items[#items + 1] = render_key(k, opts, depth + 1, path) .. " = " .. render(rawget(t, k), opts, depth + 1, path)
  end
  if total > shown then items[#items + 1] = ("... (%d more)"):format(total - shown) end
  return items
end

local function render_table(t, opts, depth, path)
  local mt = getmetatable(t)
  if type(mt) == "table" and rawget(mt, "__tostring") then
    local ok, s = pcall(tostring, t)
    if ok then return s end
  end
  if path[t] then return "<cycle>" end
  if next(t) == nil then return "{}" end
  if depth >= opts.depth then return "{...}" end
  path[t] = true
  local items = table_items(t, opts, depth, path)
  path[t] = nil
  local one = "{" .. table.concat(items, ", ") .. "}"
  if #one + depth * 2 <= opts.width and not one:find("\n", 1, true) then return one end
  local pad = string.rep("  ", depth + 1)
  return "{\n" .. pad .. table.concat(items, ",\n" .. pad) .. "\n" .. string.rep("  ", depth) .. "}"
end

function render(v, opts, depth, path)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "table" then return render_table(v, opts, depth, path) end
  return tostring(v)
end

-- pretty(v, {depth=, width=, max_items=}) -> a readable string: tables nested with indentation,
-- keys sorted, cycles shown as <cycle>, nesting deeper than depth as {...}, strings quoted.
function M.pretty(v, opts)
  opts = opts or {}
  local o = {depth = opts.depth or 6, width = opts.width or 78, max_items = opts.max_items or 200}
  return render(v, o, 0, {})
end

-- The results of a chunk (a table.pack) as one string, tab-separated; nil when there are none.
function M.format_results(r)
  if r.n == 0 then return nil end
  local parts = {}
  for i = 1, r.n do parts[i] = M.pretty(r[i]) end
  return table.concat(parts, "\t")
end

---------------------------------------------------------------------------------------------------
-- compiling chunks

local INCOMPLETE = "incomplete"

-- compile(src, env) -> fn | nil, "incomplete" | nil, message. An expression is compiled as
-- "return <expr>" so its value is printed; a chunk cut short (error at <eof>) is incomplete.
function M.compile(src, env)
  local fn = load("return " .. src, "=repl", "t", env)
  if fn then return fn end
  local err
  fn, err = load(src, "=repl", "t", env)
  if fn then return fn end
  if err:sub(-5) == "<eof>" then return nil, INCOMPLETE end
  return nil, err
end

---------------------------------------------------------------------------------------------------
-- Tab completion

-- Adds the string keys of v and of its __index tables to names.
local function field_names(v, names)
  for _ = 1, 8 do
    if type(v) == "table" then
      for k in pairs(v) do if type(k) == "string" then names[k] = true end end
    end
    local mt = getmetatable(v)
    v = type(mt) == "table" and rawget(mt, "__index")
    if type(v) ~= "table" then return end
  end
end

local function index(v, k)
  local ok, r = pcall(function() return v[k] end)
  return ok and r or nil
end

-- complete(word, env) -> the sorted words that word could be completed to: global names and
-- keywords, or after "a.b." the fields of a.b (after "obj:" its methods). Names starting with "_"
-- only when the word does.
function M.complete(word, env)
  local path, sep, partial = word:match("^([%w_.]-[%w_])([.:])([%w_]*)$")
  local names, v = {}, env
  if path then
    for part in path:gmatch("[^.]+") do
      v = index(v, part)
      if v == nil then return {} end
    end
    field_names(v, names)
  else
    if not word:match("^[%w_]*$") then return {} end
    partial, path, sep = word, "", ""
    field_names(env, names)
    for k in pairs(keywords) do names[k] = true end
  end
  local out = {}
  for name in pairs(names) do
    if name:sub(1, #partial) == partial and name:match("^[%a_][%w_]*$")
       and (name:sub(1, 1) ~= "_" or partial:sub(1, 1) == "_")
       and (sep ~= ":" or type(index(v, name)) == "function") then
      out[#out + 1] = path .. sep .. name
    end
  end
  table.sort(out)
  return out
end

---------------------------------------------------------------------------------------------------
-- the environment lines run in

-- print that keeps the prompt intact: output of a background task goes above the prompt and the
-- line being typed, which are drawn again after it.
local function prompt_safe_print(...)
  if not crepl.active() then return print(...) end
  crepl.hide()
  print(...)
  crepl.show()
end

-- A fresh environment: _G underneath, every runbox module that loads as a global, pp, print.
function M.env()
  local env = setmetatable({}, {__index = _G})
  local loaded = {}
  for _, name in ipairs(M.MODULES) do
    local ok, mod = pcall(require, "runbox." .. name)
    if ok and mod ~= nil and mod ~= true then
      env[name] = mod
      loaded[#loaded + 1] = name
    end
  end
  env.print = prompt_safe_print
  env.pp = function(...)
    local r = pack(...)
    prompt_safe_print(M.format_results(r) or "")
  end
  return env, loaded
end

---------------------------------------------------------------------------------------------------
-- history file: plain text, one entry per line, newest last

function M.history_path()
  local p = os.getenv("RUNBOX_HISTORY")
  if p then return p ~= "" and p or nil end
  local home = os.getenv("HOME")
  return home and home ~= "" and (home .. "/.runbox_history") or nil
end

-- Reads the last `limit` entries; rewrites the file when it has grown past the limit.
local function load_history(path, limit)
  local f = io.open(path, "r")
  if not f then return {} end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  if #lines <= limit then return lines end
  lines = table.move(lines, #lines - limit + 1, #lines, 1, {})
  local tmp = path .. ".tmp"
  local out = io.open(tmp, "w")
  if out and out:write(table.concat(lines, "\n"), "\n") and out:close() then os.rename(tmp, path) end
  return lines
end

local function append_history(session, line)
  if not session.history or line == session.last_entry then return end
  session.last_entry = line
  crepl.add_history(line)
  local f, err = io.open(session.history, "a")
  if f then
    f:write(line, "\n")
    f:close()
  elseif not session.history_warned then
    session.history_warned = true
    io.stderr:write("runbox: cannot save history to ", session.history, " (", tostring(err),
                    "); set RUNBOX_HISTORY to a writable file\n")
  end
end

---------------------------------------------------------------------------------------------------
-- running chunks

local function short_traceback(tb)
  local out = {}
  for line in tb:gmatch("[^\n]+") do
    if line:find("in function 'xpcall'", 1, true) or line:find("runbox/sched.lua", 1, true) then break end
    if not line:find("(...tail calls...)", 1, true) then out[#out + 1] = line end
  end
  if out[#out] == "stack traceback:" then out[#out] = nil end
  return table.concat(out, "\n")
end

local function report_error(session, err, traceback)
  io.stdout:flush()
  if errors.is(err, "cancelled") then
    -- the terminal has echoed ^C on the line of the interrupted code
    io.stderr:write(session.interactive and "\ninterrupted\n" or "interrupted\n")
    return
  end
  local text = traceback and short_traceback(traceback) or errors.message(err)
  io.stderr:write(text, "\n")
end

-- Ctrl-C inside a line that never blocks (a busy loop) arrives through this count hook.
local function install_interrupt_hook(session, t)
  if not session.interactive then return end
  debug.sethook(t.co, function()
    if sched.current() == t and crepl.take_sigint() then
      error(errors.new("cancelled", "interrupted"), 0)
    end
  end, "", 100000)
end

-- Runs fn in its own task and waits for it; prints its results or its error. true when it worked.
local function run(session, fn)
  local t = sched.spawn(fn)
  t.name = "repl line"
  install_interrupt_hook(session, t)
  session.running = t
  local r = pack(t:wait())
  session.running = nil
  for _, bg in ipairs(sched.take_unobserved()) do   -- background tasks that failed meanwhile
    report_error(session, bg.result[2], bg.traceback)
  end
  if not r[1] then
    report_error(session, r[2], t.traceback)
    return false
  end
  local text = M.format_results(pack(unpack(r, 2, r.n)))
  if text then print(text) end
  return true
end

-- Takes one line of input. Returns "more" when the chunk needs more lines, otherwise runs it and
-- returns true (ran fine or blank) or false (syntax or runtime error).
local function submit(session, line)
  local pending = session.pending
  if #pending == 0 and not line:find("%S") then return true end
  pending[#pending + 1] = line
  local fn, err = M.compile(table.concat(pending, "\n"), session.env)
  if err == INCOMPLETE then return "more" end
  session.pending = {}
  if not fn then
    report_error(session, err)
    return false
  end
  return run(session, fn)
end

---------------------------------------------------------------------------------------------------
-- Ctrl-C

local function on_sigint(session)
  if session.running then
    session.running:cancel("interrupted")
  elseif crepl.active() then
    session.pending = {}
    crepl.interrupt(M.PROMPT)
  end
end

-- The REPL claims SIGINT through sched.on_signal: the default policy (cancel every task, exit)
-- is for scripts. Returns a function that gives the hook back.
local function claim_sigint(session)
  local old_hook = sched.on_signal
  sched.on_signal = function(name, count)
    if name == "SIGINT" then
      on_sigint(session)
      return true
    end
    if old_hook then return old_hook(name, count) end
  end
  return function() sched.on_signal = old_hook end
end

---------------------------------------------------------------------------------------------------
-- input

-- Reads one line at the terminal; nil at end of input (Ctrl-D on an empty line).
local function read_tty_line(prompt)
  crepl.prompt(prompt)
  while true do
    local kind, text = crepl.feed()
    if kind == "line" then return text end
    if kind == "eof" then return nil end
    sched.wait_fd(0, "r")
  end
end

-- An iterator over the lines of a non-terminal stdin that parks instead of blocking.
local function plain_lines()
  local buf, done = "", false
  return function()
    while true do
      local nl = buf:find("\n", 1, true)
      if nl then
        local line = buf:sub(1, nl - 1):gsub("\r$", "")
        buf = buf:sub(nl + 1)
        return line
      end
      if done then
        if buf == "" then return nil end
        local line = buf
        buf = ""
        return line
      end
      local data, err = crepl.read_plain(0)
      if data == "" then done = true
      elseif data then buf = buf .. data
      elseif err == "again" then sched.wait_fd(0, "r")
      else
        io.stderr:write("runbox: ", err, "\n")
        done = true
      end
    end
  end
end

---------------------------------------------------------------------------------------------------
-- the two loops

-- Piped or redirected input: no prompt, no editing, no history. Exit status 1 when a chunk
-- failed, so `runbox repl < script` can be checked.
local function run_plain(session)
  local failed = false
  for line in plain_lines() do
    if submit(session, line) == false then failed = true end
  end
  if #session.pending > 0 then
    local _, err = load(table.concat(session.pending, "\n"), "=repl", "t", session.env)
    report_error(session, err or "incomplete chunk at end of input")
    failed = true
  end
  io.stdout:flush()
  if failed then os.exit(1) end
end

local function banner(loaded)
  print(("runbox %s REPL (%s). Modules: %s."):format(crepl.version, _VERSION, table.concat(loaded, ", ")))
  print("Expressions print their value. Ctrl-C interrupts a line or clears the input; Ctrl-D exits.")
end

local function run_tty(session, loaded)
  local ok, err = crepl.open(M.HISTORY_SIZE)
  if not ok then
    io.stderr:write("runbox: ", err, "; reading plain lines\n")
    return run_plain(session)
  end
  local restore = claim_sigint(session)
  crepl.set_completer(function(word) return M.complete(word, session.env) end)
  local guard <close> = setmetatable({}, {__close = function()
    restore()
    crepl.set_completer(nil)
    crepl.close()
  end})
  session.interactive = true
  session.history = M.history_path()
  if session.history then
    for _, line in ipairs(load_history(session.history, M.HISTORY_SIZE)) do
      crepl.add_history(line)
      session.last_entry = line
    end
  end
  banner(loaded)
  while true do
    local line = read_tty_line(#session.pending > 0 and M.CONTINUE or M.PROMPT)
    if not line then break end
    if line:find("%S") then append_history(session, line) end
    submit(session, line)
  end
end

-- Entry point of `runbox repl` (engine/main.c runs it as the main task).
function M.main(...)
  local env, loaded = M.env()
  local session = {env = env, pending = {}}
  if crepl.isatty(0) then return run_tty(session, loaded) end
  return run_plain(session)
end

return M
