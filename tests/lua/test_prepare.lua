-- `runbox prepare` through the real binary (every example task, idempotence, user files kept,
-- --out, bad flags, broken tasks) and the runbox.cli argument parser the recipes share.
local T = require "runbox.testing"
local cli = require "runbox.cli"
local task = require "runbox.task"
local fs = require "runbox.fs"
local json = require "runbox.json"
local proc = require "runbox.proc"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
local EXAMPLES = SRC .. "/examples/tasks"

local function runbox_bin()
  local bin = os.getenv("RUNBOX_BIN")
  if bin and bin ~= "" then
    if bin:sub(1, 1) ~= "/" then bin = assert(fs.realpath(bin)) end
    return bin
  end
  return assert(fs.readlink("/proc/self/exe"))
end
local BIN = runbox_bin()

local function scratch(fn)
  return function()
    local dir = assert(fs.realpath(assert(fs.temp_dir("runbox-prepare-test"))))
    local ok, err = pcall(fn, dir)
    fs.remove_tree(dir)
    if not ok then error(err, 0) end
  end
end

local function prepare(args, cwd)
  local cmd = {BIN, "prepare"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.cwd, cmd.timeout = cwd, 30
  return assert(proc.run(cmd))
end

-- Every file under dir: relative path -> {content, mtime, size}.
local function snapshot(dir)
  local out = {}
  for _, e in ipairs(assert(fs.walk(dir))) do
    if e.type == "file" then
      local st = assert(fs.stat(dir .. "/" .. e.path))
      out[e.path] = {content = assert(fs.read(dir .. "/" .. e.path)), mtime = st.mtime, size = st.size}
    else
      out[e.path] = {type = e.type}
    end
  end
  return out
end

local function leftovers(out)
  local found = {}
  for _, n in ipairs(fs.list(out) or {}) do if n:find("%.prepare%-") then found[#found + 1] = n end end
  return found
end

---------------------------------------------------------------------------------------------------
-- runbox prepare

T.test("every example prepares: the path alone on stdout, overlay files, a loadable prepared task", scratch(function(dir)
  local out = dir .. "/out"
  for _, created in ipairs(assert(task.discover(EXAMPLES))) do
    local c = assert(task.load(created))
    local r = prepare({created, "--out", out})
    T.eq(r.code, 0, r.stderr)
    T.eq(r.stdout, out .. "/" .. c.name .. "\n")
    T.eq(r.stderr, "")
    local p = out .. "/" .. c.name
    local meta = assert(fs.read(p .. "/tb_meta.json"))
    T.eq(fs.read(p .. "/overlay_files/tb_meta.json"), meta)
    for _, f in ipairs{"LM_INSTRUCTIONS.md", "repo_info.json", "diff.patch", "notes.md"} do
      T.eq(fs.read(p .. "/overlay_files/" .. f), fs.read(created .. "/" .. f), f)
    end
    local t = assert(task.load(p))
    T.eq(t.kind, "prepared")
    T.eq({t.id, t.name, t.title, t.instructions}, {c.id, c.name, c.title, c.instructions})
    T.eq(t.rubrics, c.rubrics)
    T.eq(t.test_scripts, c.test_scripts)
    T.eq(t.repo.url, c.repo.url)
    T.eq(t.repo.git_url, c.repo.local_path, "the relative bundle path became absolute")
    T.eq(t.reference_patch, p .. "/overlay_files/diff.patch")
    local decoded = json.decode(meta)
    T.eq(decoded.evaluation.content_rubric, nil)
    T.ok(json.is_array(decoded.evaluation.rubrics) and #decoded.evaluation.rubrics > 0)
  end
  T.eq(leftovers(out), {})
  -- the task without tests got runbox's defaults, written out in full
  local slug = assert(json.decode_file(out .. "/add-slugify/tb_meta.json"))
  T.eq(slug.evaluation.rubrics[1].id, "runbox_touches_reference")
  T.match(slug.evaluation.test_scripts[1].content, "def test_change_touches_reference_files")
end))

T.test("preparing twice changes nothing; a third time restores what was edited", scratch(function(dir)
  local out = dir .. "/out"
  local created = EXAMPLES .. "/document-greet-options"
  T.eq(prepare({created, "--out", out}).code, 0)
  local first = snapshot(out)
  local r = prepare({created, "--out", out})
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, out .. "/document-greet-options\n")
  T.eq(snapshot(out), first, "not even a modification time changed")
  -- an edited managed file comes back, files of the user's stay
  local p = out .. "/document-greet-options"
  fs.write(p .. "/tb_meta.json", "{}")
  fs.write(p .. "/my-notes.txt", "mine")
  fs.write(p .. "/overlay_files/box_bootstrap.sh", "#!/bin/sh\n")
  fs.write(out .. "/unrelated.txt", "also mine")
  T.eq(prepare({created, "--out", out}).code, 0)
  T.eq(fs.read(p .. "/tb_meta.json"), first["document-greet-options/tb_meta.json"].content)
  T.eq(fs.read(p .. "/my-notes.txt"), "mine")
  T.eq(fs.read(p .. "/overlay_files/box_bootstrap.sh"), "#!/bin/sh\n")
  T.eq(fs.read(out .. "/unrelated.txt"), "also mine")
  T.eq(fs.read(p .. "/overlay_files/diff.patch"), fs.read(created .. "/diff.patch"), "untouched files stay")
  T.eq(leftovers(out), {})
end))

T.test("--out defaults to data/tasks/prepared under the current folder; --out=DIR works", scratch(function(dir)
  fs.mkdir_p(dir .. "/tasks")
  assert(proc.run{"cp", "-R", EXAMPLES .. "/fix-median-bug", dir .. "/tasks/"})
  fs.mkdir_p(dir .. "/repos")
  assert(fs.copy_file(SRC .. "/examples/repos/fix-median-bug.bundle", dir .. "/repos/fix-median-bug.bundle"))
  local r = prepare({"tasks/fix-median-bug"}, dir)
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, dir .. "/data/tasks/prepared/fix-median-bug\n")
  local t = assert(task.load(dir .. "/data/tasks/prepared/fix-median-bug"))
  T.eq(t.repo.url, dir .. "/repos/fix-median-bug.bundle", "resolved against the created task's folder")
  r = prepare({"--out=elsewhere", "tasks/fix-median-bug"}, dir)
  T.eq(r.code, 0, r.stderr)
  T.eq(r.stdout, dir .. "/elsewhere/fix-median-bug\n")
end))

T.test("usage errors exit 2 and name the flag; --help exits 0", scratch(function(dir)
  local r = prepare({"--bogus", EXAMPLES .. "/fix-median-bug"})
  T.eq(r.code, 2)
  T.match(r.stderr, "^runbox prepare: unknown flag '%-%-bogus' %(see runbox prepare %-%-help%)\n$")
  T.eq(r.stdout, "")
  r = prepare({EXAMPLES .. "/fix-median-bug", "--out"})
  T.eq(r.code, 2)
  T.match(r.stderr, "flag '%-%-out' needs a value %(DIR%)")
  r = prepare({})
  T.eq(r.code, 2)
  T.match(r.stderr, "missing CREATED_DIR")
  r = prepare({"a", "b"})
  T.eq(r.code, 2)
  T.match(r.stderr, "unexpected argument 'b'")
  r = prepare({"-x"})
  T.eq(r.code, 2)
  T.match(r.stderr, "unknown flag '%-x'")
  for _, h in ipairs{"--help", "-h"} do
    r = prepare({h})
    T.eq(r.code, 0)
    T.match(r.stdout, "^usage: runbox prepare CREATED_DIR %[%-%-out DIR%]\n")
    T.match(r.stdout, "%-%-out DIR +folder that receives the prepared task.*%(default: data/tasks/prepared%)")
    T.eq(r.stderr, "")
  end
end))

T.test("a broken or missing task exits 1 with the file and field, writing nothing", scratch(function(dir)
  local out = dir .. "/out"
  local bad = dir .. "/bad"
  fs.mkdir_p(bad)
  fs.write(bad .. "/tb_meta.json", '{\n  "task_id": "x_20250101_000000",\n  "metadata": {"title": "t"},\n  "repo": {"git_url": ""}\n}\n')
  local r = prepare({bad, "--out", out})
  T.eq(r.code, 1)
  T.eq(r.stdout, "")
  T.match(r.stderr, "^runbox prepare: " .. bad:gsub("%p", "%%%0") .. "/tb_meta%.json: repo%.git_url: empty")
  fs.write(bad .. "/tb_meta.json", '{"task_id": "x",\n "metadata": {"title": "t"},,}')
  r = prepare({bad, "--out", out})
  T.eq(r.code, 1)
  T.match(r.stderr, "tb_meta%.json: invalid JSON: .*at line 2, column %d+")
  r = prepare({dir .. "/missing", "--out", out})
  T.eq(r.code, 1)
  T.match(r.stderr, "task folder '.*/missing' does not exist")
  T.eq(fs.list(out) or {}, {}, "nothing written")
  -- a prepared task is not prepared again; a file in the way is reported
  T.eq(prepare({EXAMPLES .. "/yaml-config", "--out", out}).code, 0)
  r = prepare({out .. "/yaml-config", "--out", dir .. "/again"})
  T.eq(r.code, 1)
  T.match(r.stderr, "is a prepared task already")
  fs.mkdir_p(dir .. "/blocked")
  fs.write(dir .. "/blocked/yaml-config", "a file")
  r = prepare({EXAMPLES .. "/yaml-config", "--out", dir .. "/blocked"})
  T.eq(r.code, 1)
  T.match(r.stderr, "yaml%-config' exists and is not a folder")
  T.eq(leftovers(dir .. "/blocked"), {})
  -- never into a created task: itself, or another one that has the prepared name
  fs.mkdir_p(dir .. "/tasks")
  assert(proc.run{"cp", "-R", EXAMPLES .. "/fix-median-bug", dir .. "/tasks/"})
  r = prepare({dir .. "/tasks/fix-median-bug", "--out", dir .. "/tasks"})
  T.eq(r.code, 1)
  T.match(r.stderr, "would replace the created task '.*/tasks/fix%-median%-bug' itself")
  assert(proc.run{"cp", "-R", EXAMPLES .. "/yaml-config", dir .. "/tasks/yaml-config_20250101_000000"})
  assert(proc.run{"cp", "-R", EXAMPLES .. "/yaml-config", dir .. "/tasks/"})
  local before = assert(fs.read(dir .. "/tasks/yaml-config/tb_meta.json"))
  r = prepare({dir .. "/tasks/yaml-config_20250101_000000", "--out", dir .. "/tasks"})
  T.eq(r.code, 1)
  T.match(r.stderr, "yaml%-config' is a created task, not a prepared one")
  T.eq(fs.read(dir .. "/tasks/yaml-config/tb_meta.json"), before)
  T.eq(fs.exists(dir .. "/tasks/yaml-config/overlay_files"), false)
end))

T.test("prepares of one task running at once all succeed and leave one complete folder", scratch(function(dir)
  local sched = require "runbox.sched"
  local out = dir .. "/out"
  local runs = {}
  for i = 1, 6 do runs[i] = sched.spawn(prepare, {EXAMPLES .. "/todo-priorities", "--out", out}) end
  for _, r in ipairs(sched.wait_all(runs)) do
    T.eq(r[2].code, 0, r[2].stderr)
    T.eq(r[2].stdout, out .. "/todo-priorities\n")
  end
  T.eq(leftovers(out), {})
  T.eq(fs.list(out), {"todo-priorities"})
  T.ok(task.load(out .. "/todo-priorities"))
  T.eq(fs.read(out .. "/todo-priorities/overlay_files/diff.patch"), fs.read(EXAMPLES .. "/todo-priorities/diff.patch"))
end))

T.test("task.prepare from Lua returns the path or nil, err", scratch(function(dir)
  local p = assert(task.prepare(EXAMPLES .. "/todo-priorities", {out = dir}))
  T.eq(p, dir .. "/todo-priorities")
  local none, err = task.prepare(dir .. "/nope", {out = dir})
  T.eq(none, nil)
  T.eq(err.code, "task")
  T.raises("bad argument", task.prepare, nil)
end))

---------------------------------------------------------------------------------------------------
-- runbox.cli

local SPEC = {
  name = "demo",
  summary = "A demo recipe.",
  positional = {{name = "task-dir", help = "the task"}, {name = "extra", required = false}},
  flags = {
    {name = "out", short = "o", value = "DIR", default = "data", help = "where to"},
    {name = "max-parallel", value = "N", type = "integer", min = 1, help = "at once"},
    {name = "ratio", value = "X", type = "number"},
    {name = "format", value = "FMT", choices = {"markdown", "csv", "json"}, default = "markdown"},
    {name = "env", value = "K=V", multi = true},
    {name = "model", value = "NAME", env = "RUNBOX_TEST_CLI_MODEL"},
    {name = "keep", help = "keep files"},
  },
}

local function parse(argv) return cli.parse(SPEC, argv) end

T.test("cli: flags with values, booleans, positionals, defaults", function()
  local a = assert(parse{"t1", "--out", "x", "--max-parallel=4", "--keep", "--env", "A=1", "-o", "y", "--env=B=2"})
  T.eq(a.task_dir, "t1")
  T.eq(a.extra, nil)
  T.eq(a.out, "y", "the last value wins")
  T.eq(a.max_parallel, 4)
  T.eq(math.type(a.max_parallel), "integer")
  T.eq(a.keep, true)
  T.eq(a.env, {"A=1", "B=2"})
  T.eq(a.format, "markdown")
  T.eq(a.help, false)
  a = assert(parse{"t1", "e", "--ratio", "0.5", "--format", "csv"})
  T.eq({a.extra, a.ratio, a.format, a.keep, a.max_parallel, a.env, a.out}, {"e", 0.5, "csv", false, nil, {}, "data"})
  a = assert(parse{"--", "-dash-dir"})
  T.eq(a.task_dir, "-dash-dir")
  T.eq(assert(parse{"-"}).task_dir, "-")
  T.eq(assert(parse{"t", "--help"}).help, true)
  T.eq(assert(parse{"--bogus", "-h"}).help, true, "--help wins over everything")
end)

T.test("cli: errors name the flag and say what is wrong", function()
  local cases = {
    {{"t", "--bogus"}, "unknown flag '%-%-bogus'", "--bogus"},
    {{"t", "--bogus=1"}, "unknown flag '%-%-bogus'", "--bogus=1"},
    {{"t", "-z"}, "unknown flag '%-z'", "-z"},
    {{"t", "--out"}, "flag '%-%-out' needs a value %(DIR%)", "--out"},
    {{"t", "--keep=yes"}, "flag '%-%-keep' takes no value", "--keep"},
    {{"t", "--max-parallel", "many"}, "flag '%-%-max%-parallel' expects a whole number, got 'many'", "--max-parallel"},
    {{"t", "--max-parallel", "2.5"}, "flag '%-%-max%-parallel' expects a whole number, got '2%.5'", "--max-parallel"},
    {{"t", "--max-parallel", "0"}, "flag '%-%-max%-parallel' must be at least 1, got '0'", "--max-parallel"},
    {{"t", "--ratio", "x"}, "flag '%-%-ratio' expects a number, got 'x'", "--ratio"},
    {{"t", "--format", "xml"}, "flag '%-%-format' must be one of markdown, csv, json, got 'xml'", "--format"},
    {{}, "missing TASK_DIR", "TASK_DIR"},
    {{"a", "b", "c"}, "unexpected argument 'c'", nil},
  }
  for _, c in ipairs(cases) do
    local a, err = parse(c[1])
    T.eq(a, nil, table.concat(c[1], " "))
    T.eq(err.code, "usage")
    T.match(err.message, "^runbox demo: " .. c[2] .. " %(see runbox demo %-%-help%)$")
    T.eq(err.flag, c[3])
  end
end)

T.test("cli: a default from the environment, checked like a flag", scratch(function(dir)
  local code = [[
    local cli = require "runbox.cli"
    local a, err = cli.parse({name = "x", flags = {{name = "model", value = "M", env = "RUNBOX_TEST_CLI_MODEL"},
                                                   {name = "n", value = "N", type = "integer", env = "RUNBOX_TEST_CLI_N"}}}, {...})
    print(a and a.model, a and a.n, err)
  ]]
  local r = assert(proc.run{BIN, "-e", code, env = {RUNBOX_TEST_CLI_MODEL = "gpt-x", RUNBOX_TEST_CLI_N = "3"}})
  T.eq(r.stdout, "gpt-x\t3\tnil\n")
  r = assert(proc.run{BIN, "-e", code, "--model", "flag-wins", env = {RUNBOX_TEST_CLI_MODEL = "gpt-x"}})
  T.eq(r.stdout, "flag-wins\tnil\tnil\n")
  r = assert(proc.run{BIN, "-e", code, env = {RUNBOX_TEST_CLI_N = "lots"}})
  T.match(r.stdout, "environment variable RUNBOX_TEST_CLI_N expects a whole number, got 'lots'")
end))

T.test("cli: help text lists arguments and options with defaults", function()
  local h = cli.help(SPEC)
  T.match(h, "^usage: runbox demo TASK_DIR %[EXTRA%] %[%-%-out DIR%] %[%-%-max%-parallel N%]")
  T.match(h, "\nA demo recipe%.\n")
  T.match(h, "\narguments:\n  TASK_DIR +the task\n  EXTRA\n")
  T.match(h, "\n  %-o, %-%-out DIR +where to %(default: data%)\n")
  T.match(h, "%-%-format FMT +%(markdown, csv, json%) %(default: markdown%)")
  T.match(h, "%-%-model NAME +%(env: RUNBOX_TEST_CLI_MODEL%)")
  T.match(h, "%-%-env K=V +%(repeatable%)")
  T.match(h, "%-%-keep +keep files\n")
  T.match(h, "%-h, %-%-help +show this help and exit\n$")
  T.raises("spec", cli.parse, {name = "x", flags = {{name = "--bad"}}}, {})
  T.raises("unknown type", cli.parse, {name = "x", flags = {{name = "n", value = "N", type = "float"}}}, {})
  T.raises("bad argument", cli.parse, nil, {})
end)

T.test("cli.main prints help (exit 0) or the error (exit 2)", function()
  local code = [[
    local cli = require "runbox.cli"
    local a = cli.main({name = "x", positional = {{name = "dir"}}}, {...})
    print("got " .. a.dir)
  ]]
  local r = assert(proc.run{BIN, "-e", code, "d1"})
  T.eq({r.code, r.stdout}, {0, "got d1\n"})
  r = assert(proc.run{BIN, "-e", code, "--help"})
  T.eq(r.code, 0)
  T.match(r.stdout, "^usage: runbox x DIR\n")
  r = assert(proc.run{BIN, "-e", code, "--nope"})
  T.eq({r.code, r.stdout}, {2, ""})
  T.eq(r.stderr, "runbox x: unknown flag '--nope' (see runbox x --help)\n")
end)

T.run()
