-- `runbox repl`: the real binary driven through a pseudo-terminal (tests/helpers/pty_drive.py),
-- piped stdin, and the pretty printer and chunk compiler in-process.
local T = require "runbox.testing"
local proc = require "runbox.proc"
local repl = require "runbox.repl"
local fs = require "runbox.fs"

local BIN = T.runbox_bin()
local SOURCE = os.getenv("RUNBOX_SOURCE") or "."
local DRIVER = SOURCE .. "/tests/helpers/pty_drive.py"

local function temp_file(content)
  local path = os.tmpname()
  assert(fs.write(path, content or ""))
  return path
end

-- Runs `runbox repl` in a pty with the driver's script (a list of steps), then ends it with Ctrl-D
-- at the next prompt (unless opts.command is given) and expects status 0. Fails the test with the
-- driver's report when a step fails. Returns the whole terminal output.
local function drive(steps, opts)
  opts = opts or {}
  if not opts.command then
    -- Ctrl-D typed ahead while a line runs is the cooked terminal's end of file, not a key
    table.move({"expect > ", "send \\x04", "exit 0"}, 1, 3, #steps + 1, steps)
  end
  local hist = opts.history or temp_file()
  local argv = {"python3", DRIVER, "--timeout", tostring(opts.timeout or 8), "--"}
  for _, a in ipairs(opts.command or {BIN, "repl"}) do argv[#argv + 1] = a end
  argv.stdin = table.concat(steps, "\n") .. "\n"
  argv.env = {RUNBOX_HISTORY = hist}
  argv.timeout = 60
  local r = assert(proc.run(argv))
  if not opts.history then os.remove(hist) end
  if r.code ~= 0 then
    error(("pty session failed (%s %s)\n%s\n--- terminal output ---\n%s"):format(
      r.how, r.code, r.stderr, r.stdout), 0)
  end
  return r.stdout
end

local function piped(input)
  return assert(proc.run{BIN, "repl", stdin = input, timeout = 30})
end

---------------------------------------------------------------------------------------------------
-- at the terminal

T.test("an expression prints its value; Ctrl-D exits 0", function()
  drive{"expect > ", "send 1 + 1\\r", "expect \\n2\\r\\n"}
end)

T.test("a multi-line function definition, then a call", function()
  drive{"expect > ", "send function double(x)\\r", "expect >> ", "send   return x * 2\\r",
        "expect >> ", "send end\\r", "expect \\n> ", "send double(21)\\r", "expect \\n42\\r\\n"}
end)

T.test("tables are printed pretty, keys sorted", function()
  drive{"expect > ", 'send {b = 1, a = {1, 2}, "x"}\\r', 'expect \\{"x", a = \\{1, 2\\}, b = 1\\}'}
end)

T.test("sched.sleep at the prompt returns after the time", function()
  drive{"expect > ", "send t0 = sched.now()\\r", "expect > ", "send sched.sleep(0.2)\\r",
        "expect_within 3 \\n> ", "send sched.now() - t0 >= 0.2\\r", "expect \\ntrue\\r\\n"}
end)

T.test("a background task prints while the prompt waits; the typed line survives", function()
  drive{"expect > ", 'send sched.spawn(function() sched.sleep(0.3) print("tick") end)\\r',
        "expect task", "send 12", "expect_within 3 tick\\r\\n> 12",
        "send 3 + 1\\r", "expect \\n124\\r\\n"}
end)

T.test("proc.run at the prompt", function()
  drive{"expect > ", 'send proc.run{"echo", "hi"}.stdout\\r', 'expect "hi\\\\n"'}
end)

T.test("an error prints its message and the next line still works", function()
  local out = drive{"expect > ", 'send error("boom")\\r', "expect repl:1: boom",
                    "expect stack traceback", "send 6 * 7\\r", "expect \\n42\\r\\n"}
  T.ok(not out:find("sched.lua", 1, true), "the traceback stops at the line's code")
end)

T.test("history: saved to RUNBOX_HISTORY, recalled with the up arrow next time", function()
  local hist = temp_file()
  drive({"expect > ", 'send print("hist" .. 6 * 7)\\r', "expect hist42"},
        {history = hist})
  T.match(fs.read(hist), 'print%("hist" %.%. 6 %* 7%)\n')
  drive({"expect > ", "send \\x1b[A", "expect 6 \\* 7", "send \\r", "expect \\nhist42"}, {history = hist})
  os.remove(hist)
end)

T.test("history file is trimmed to the size limit", function()
  local lines = {}
  for i = 1, repl.HISTORY_SIZE + 50 do lines[i] = "x" .. i end
  local hist = temp_file(table.concat(lines, "\n") .. "\n")
  drive({}, {history = hist})
  local kept = {}
  for line in fs.read(hist):gmatch("[^\n]+") do kept[#kept + 1] = line end
  os.remove(hist)
  T.eq(#kept, repl.HISTORY_SIZE)
  T.eq(kept[#kept], "x" .. (repl.HISTORY_SIZE + 50))
end)

T.test("Ctrl-C interrupts a blocking line within a second, the REPL goes on", function()
  drive{"expect > ", "send sched.sleep(30)\\r", "sleep 0.3", "send \\x03",
        "expect_within 1 interrupted", "send 1 + 2\\r", "expect \\n3\\r\\n"}
end)

T.test("Ctrl-C interrupts a busy loop", function()
  drive{"expect > ", "send while true do end\\r", "sleep 0.3", "send \\x03",
        "expect_within 1 interrupted", "send 1 + 3\\r", "expect \\n4\\r\\n"}
end)

T.test("Ctrl-C at the prompt clears the input and a pending multi-line chunk", function()
  drive{"expect > ", "send some junk", "sleep 0.1", "send \\x03", "expect \\^C\\r\\n> ",
        "send function f()\\r", "expect >> ", "send \\x03", "expect \\^C\\r\\n> ",
        "send 5 * 5\\r", "expect \\n25\\r\\n"}
end)

T.test("a background task keeps running while a Ctrl-C stops the current line", function()
  drive{"expect > ", "send n = 0\\r", "expect > ",
        "send sched.spawn(function() while true do sched.sleep(0.05); n = n + 1 end end)\\r",
        "expect task", "send sched.sleep(30)\\r", "sleep 0.2", "send \\x03", "expect_within 1 interrupted",
        "send m = n\\r", "expect > ", "send sched.sleep(0.2)\\r", "expect > ", "send n > m\\r", "expect \\ntrue\\r\\n"}
end)

T.test("Tab completes names and fields", function()
  drive{"expect > ", "send string.forma\\t", 'send ("%d", 7)\\r', 'expect \\n"7"\\r\\n',
        "send proc.s\\t", "expect proc.sh +proc.spawn", "send h\\x15", "expect > "}
end)

T.test("the terminal is sane after exit, and os.exit sets the status", function()
  local out = drive({"expect > ", "send os.exit(3)\\r", "expect status=3", "expect [^-]icanon"},
                    {command = {"bash", "-c", '"$0" repl; echo "status=$?"; stty -a', BIN}})
  T.match(out, "[^-]icanon")
  T.match(out, "[^-]echo ")
end)

---------------------------------------------------------------------------------------------------
-- piped stdin

T.test("piped stdin: plain lines, no prompt, values printed", function()
  local r = piped('print(1)\n1 + 1\nfunction f(a)\n  return a * 2\nend\nf(21)\n"s"\n')
  T.eq(r.stdout, '1\n2\n42\n"s"\n')
  T.eq(r.code, 0)
end)

T.test("piped stdin: blocking calls and background tasks", function()
  local r = piped('sched.spawn(function() print("bg") end) sched.sleep(0.05)\n' ..
                  'proc.run{"echo", "hi"}.stdout\n')
  T.eq(r.stdout, 'bg\n"hi\\n"\n')
end)

T.test("piped stdin: an error goes to stderr, later lines run, status 1", function()
  local r = piped('error("boom")\nprint("after")\n')
  T.eq(r.stdout, "after\n")
  T.match(r.stderr, "repl:1: boom")
  T.eq(r.code, 1)
end)

T.test("piped stdin: an incomplete chunk at the end is a syntax error", function()
  local r = piped('function f()\n')
  T.match(r.stderr, "expected")
  T.eq(r.code, 1)
end)

---------------------------------------------------------------------------------------------------
-- in-process

T.test("pretty: scalars and strings", function()
  T.eq(repl.pretty(1), "1")
  T.eq(repl.pretty(1.5), "1.5")
  T.eq(repl.pretty(nil), "nil")
  T.eq(repl.pretty(true), "true")
  T.eq(repl.pretty('a "q"\nb'), '"a \\"q\\"\\nb"')
end)

T.test("pretty: sequence first, keys sorted by type then value, odd keys bracketed", function()
  T.eq(repl.pretty({3, 4, z = 1, a = 2, [10] = 5, ["not id"] = 6, ["end"] = 7}),
       '{3, 4, [10] = 5, a = 2, ["end"] = 7, ["not id"] = 6, z = 1}')
end)

T.test("pretty: wide tables nest with indentation", function()
  local t = {name = string.rep("n", 40), inner = {list = {1, 2, 3}, text = string.rep("t", 50)}}
  T.eq(repl.pretty(t), table.concat({
    "{",
    "  inner = {",
    "    list = {1, 2, 3},",
    '    text = "' .. string.rep("t", 50) .. '"',
    "  },",
    '  name = "' .. string.rep("n", 40) .. '"',
    "}"}, "\n"))
end)

T.test("pretty: cycles, depth limit, item limit, __tostring", function()
  local t = {}
  t.self = t
  T.eq(repl.pretty(t), "{self = <cycle>}")
  local shared = {1}
  T.eq(repl.pretty({shared, shared}), "{{1}, {1}}")
  T.eq(repl.pretty({a = {b = {c = {}}}}, {depth = 2}), "{a = {b = {...}}}")
  T.eq(repl.pretty({1, 2, 3, 4}, {max_items = 2}), "{1, 2, ... (2 more)}")
  T.eq(repl.pretty(setmetatable({}, {__tostring = function() return "obj" end})), "obj")
  T.eq(repl.pretty({}), "{}")
end)

T.test("format_results: several values tab-separated, none is nil", function()
  T.eq(repl.format_results(table.pack(1, "a", nil)), '1\t"a"\tnil')
  T.eq(repl.format_results(table.pack()), nil)
end)

T.test("compile: expressions, statements, incomplete and bad chunks", function()
  local env = {}
  T.eq(repl.compile("1 + 1", env)(), 2)
  local fn = repl.compile("x = 5", env)
  fn()
  T.eq(env.x, 5)
  T.eq(select(2, repl.compile("function f()", env)), "incomplete")
  T.eq(select(2, repl.compile("t = {", env)), "incomplete")
  T.match(select(2, repl.compile("x = = 1", env)), "unexpected symbol")
end)

T.test("complete: globals, keywords, fields, methods; hidden names on request", function()
  local env = repl.env()
  env.obj = setmetatable({_priv = 1, field = 2}, {__index = {method = function() end, value = 3}})
  env.s = "text"
  T.eq(repl.complete("proc.s", env), {"proc.sh", "proc.spawn"})
  T.eq(repl.complete("obj.", env), {"obj.field", "obj.method", "obj.value"})
  T.eq(repl.complete("obj:", env), {"obj:method"})
  T.eq(repl.complete("obj._", env), {"obj._priv"})
  T.eq(repl.complete("s:up", env), {"s:upper"})
  T.eq(repl.complete("pri", env), {"print"})
  T.eq(repl.complete("whil", env), {"while"})
  T.eq(repl.complete("nope.x", env), {})
  T.eq(repl.complete(":up", env), {})
end)

T.test("env: modules are globals of the REPL only", function()
  local env, loaded = repl.env()
  T.ok(env.sched and env.proc and env.errors, "core modules loaded")
  T.ok(#loaded >= 3)
  T.eq(rawget(_G, "sched"), nil)
  T.eq(env.string, string, "standard library reachable")
  env.y = 1
  T.eq(rawget(_G, "y"), nil)
end)

T.run()
