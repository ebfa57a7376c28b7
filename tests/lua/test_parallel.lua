-- `runbox parallel` through the real binary, each batch in its own temp folder: the oracle and
-- none agents on every example task (summaries in three formats that agree, the journal), bad
-- input (exit 2 naming file and field, nothing written), a broken task among good ones, retries
-- for infrastructure errors only, --resume after SIGKILL and after Ctrl-C (no sandbox left, no
-- finished task run twice).
local T = require "runbox.testing"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"
local sched = require "runbox.sched"
local util = require "runbox.util"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
-- a test agent that scores 100% (the sandbox has no reference diff: the line carries it)
local APPLY = dofile(SRC .. "/tests/helpers/reference_patch.lua")(SRC .. "/examples/tasks")
local TASKS = SRC .. "/examples/tasks"
local BIN = T.runbox_bin()
local EXPECTED = assert(json.decode_file(TASKS .. "/EXPECTED.json")).tasks
local NAMES = {}
for name in pairs(EXPECTED) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)

---------------------------------------------------------------------------------------------------
-- helpers

-- Writes DIR/batch.yaml: the example tasks (or o.path, o.tasks), results in DIR/results.
local function write_config(dir, o)
  o = o or {}
  local lines = {"agents:", "  max_parallel: " .. (o.max_parallel or 5), "datasets:", "  ex:",
                 "    path: " .. (o.path or TASKS)}
  if o.tasks then lines[#lines + 1] = "    tasks: [" .. table.concat(o.tasks, ", ") .. "]" end
  lines[#lines + 1] = "output:"
  lines[#lines + 1] = "  results_dir: " .. dir .. "/results"
  local path = dir .. "/batch.yaml"
  assert(fs.write(path, table.concat(lines, "\n") .. "\n"))
  return path
end

-- Each batch gets its own sandbox registry, so what it leaves is easy to see.
local function env(dir) return {RUNBOX_SANDBOX_REGISTRY = dir .. "/registry"} end

local function argv(args)
  local cmd = {BIN, "parallel"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  return cmd
end

local function parallel(dir, args)
  local cmd = argv(args)
  cmd.cwd, cmd.env, cmd.timeout = dir, env(dir), 60
  return assert(proc.run(cmd))
end

-- The one batch folder under DIR/results.
local function batch_dir(dir)
  local names = fs.list(dir .. "/results") or {}
  T.eq(#names, 1, "batch folders in " .. dir .. "/results")
  return dir .. "/results/" .. names[1]
end

-- The journal's records; every line must be valid JSON (skip: line numbers allowed to be torn).
local function journal(bdir, skip)
  local recs = {}
  local n = 0
  for line in assert(fs.read(bdir .. "/journal.jsonl")):gmatch("[^\n]*\n") do
    n = n + 1
    local rec, err = json.decode(line)
    if not (skip and skip[n]) then
      T.ok(type(rec) == "table", ("journal line %d is not a JSON object: %s (%s)"):format(n, line, tostring(err)))
      recs[#recs + 1] = rec
    end
  end
  return recs
end

-- Per task: number of start records and of final finish records, and the final status.
local function tally(recs)
  local t = {}
  for _, r in ipairs(recs) do
    if r.task then
      local e = t[r.task] or {starts = 0, finals = 0, finishes = 0}
      t[r.task] = e
      if r.event == "start" then e.starts = e.starts + 1 end
      if r.event == "finish" then
        e.finishes = e.finishes + 1
        if r.final then e.finals, e.status = e.finals + 1, r.status end
      end
    end
  end
  return t
end

-- RFC 4180 CSV (quoted fields with commas, quotes, newlines; CRLF rows) -> list of rows.
local function parse_csv(text)
  local rows, row, field, i, n = {}, {}, {}, 1, #text
  local quoted = false
  while i <= n do
    local c = text:sub(i, i)
    if quoted then
      if c == '"' and text:sub(i + 1, i + 1) == '"' then field[#field + 1] = '"'; i = i + 1
      elseif c == '"' then quoted = false
      else field[#field + 1] = c end
    elseif c == '"' then quoted = true
    elseif c == "," then row[#row + 1] = table.concat(field); field = {}
    elseif c == "\r" and text:sub(i + 1, i + 1) == "\n" or c == "\n" then
      row[#row + 1] = table.concat(field); field = {}
      rows[#rows + 1] = row; row = {}
      if c == "\r" then i = i + 1 end
    else field[#field + 1] = c end
    i = i + 1
  end
  if #field > 0 or #row > 0 then row[#row + 1] = table.concat(field); rows[#rows + 1] = row end
  return rows
end

-- CSV rows as tables keyed by the header.
local function csv_records(text)
  local rows = parse_csv(text)
  local header, out = rows[1], {}
  for i = 2, #rows do
    local rec = {}
    for j, h in ipairs(header) do rec[h] = rows[i][j] end
    out[#out + 1] = rec
  end
  return out
end

-- The rows of the markdown summary's results table: task -> list of rows (to catch duplicates).
local function markdown_rows(md)
  local rows = {}
  for line in md:gmatch("[^\n]+") do
    local name = line:match("^| ([%w_.-]+) |")
    if name and name ~= "Task" then
      rows[name] = rows[name] or {}
      table.insert(rows[name], line)
    end
  end
  return rows
end

-- Checks that the summary (markdown text) and summary.json list every task exactly once at 100%.
local function all_perfect(md, bdir)
  local rows = markdown_rows(md)
  for _, name in ipairs(NAMES) do
    T.eq(rows[name] and #rows[name], 1, "rows for " .. name .. " in the summary")
    T.match(rows[name][1], "| %*%*100%%%*%* |", name .. " at 100%")
  end
  local list = assert(json.decode_file(bdir .. "/summary.json"))
  T.eq(#list, #NAMES, "summary.json entries")
  for i, r in ipairs(list) do
    T.eq(r.task, NAMES[i])
    T.eq(r.status, "completed", r.task)
    T.eq(r.score, 1.0, r.task)
  end
end

-- Processes (not zombies) whose command line contains one of the needles.
local function processes_with(needles)
  local found = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:match("^%d+$") and T.pid_alive(name) then
      local cmd = (fs.read("/proc/" .. name .. "/cmdline") or ""):gsub("%z", " ")
      for _, needle in ipairs(needles) do
        if cmd:find(needle, 1, true) then found[#found + 1] = name .. ": " .. cmd:sub(1, 200); break end
      end
    end
  end
  return found
end

-- Waits up to `seconds` for no such process to remain; returns what is left.
local function none_left(needles, seconds)
  local deadline = sched.now() + seconds
  while true do
    local left = processes_with(needles)
    if #left == 0 or sched.now() > deadline then return left end
    sched.sleep(0.1)
  end
end

local function registry_ids(dir)
  local ids = {}
  for _, n in ipairs(fs.list(dir .. "/registry") or {}) do
    local id = n:match("^(.+)%.json$")
    if id then ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

-- Starts a batch in the background; its output (stdout and stderr merged) is collected.
local function start_batch(dir, args)
  local cmd = argv(args)
  cmd.cwd, cmd.env, cmd.stderr, cmd.timeout = dir, env(dir), "stdout", 90
  local p = assert(proc.spawn(cmd))
  local reader = sched.spawn(function() return p:read_all() end)
  return p, reader
end

-- Waits until the journal of the (only) batch under dir shows between 1 and n-1 final finishes.
local function wait_midway(dir, n)
  local deadline = sched.now() + 40
  while sched.now() < deadline do
    local names = fs.list(dir .. "/results") or {}
    if #names == 1 then
      local text = fs.read(dir .. "/results/" .. names[1] .. "/journal.jsonl") or ""
      local finals = 0
      for line in text:gmatch("[^\n]+") do
        local r = json.decode(line)
        if r and r.event == "finish" and r.final then finals = finals + 1 end
      end
      T.ok(finals < n, "the batch finished before it could be interrupted")
      if finals >= 1 then return dir .. "/results/" .. names[1] end
    end
    sched.sleep(0.05)
  end
  error("no task finished within 40 s")
end

-- A slow agent with a unique sleep, so its processes can be told from anyone else's.
local function slow_agent()
  local marker = ("sleep 1.%06d"):format(tonumber(util.random_hex(4), 16) % 1000000)
  return "cmd:" .. marker .. "; " .. APPLY, marker
end

---------------------------------------------------------------------------------------------------
-- whole batches

T.test("oracle on every example task: 100% everywhere, three summaries that agree, a clean journal",
  T.with_temp_dir(function(dir)
    local cfg = write_config(dir)
    local r = parallel(dir, {cfg, "--max-parallel", "5"})
    T.eq(r.code, 0, r.stderr)
    local bdir = batch_dir(dir)
    all_perfect(r.stdout, bdir)
    T.eq(assert(fs.read(bdir .. "/summary.md")), r.stdout, "summary.md is what was printed")
    T.match(r.stderr, "batch folder: " .. bdir:gsub("%p", "%%%0"))
    -- CSV and JSON hold the same records
    local list = assert(json.decode_file(bdir .. "/summary.json"))
    local rows = csv_records(assert(fs.read(bdir .. "/summary.csv")))
    T.eq(#rows, #list)
    for i, row in ipairs(rows) do
      local j = list[i]
      T.eq(row.Task, j.task)
      T.eq(row.Status, j.status)
      T.eq(tonumber(row.Score), j.score * 100)
      T.eq(tonumber(row["Tests Passed"]), j.tests_passed)
      T.eq(tonumber(row["Tests Failed"]), j.tests_failed)
      T.eq(row["Run ID"], j.run_id)
      T.eq(tonumber(row["Exit Code"]), j.exit_code, "the agent's exit code")
      T.eq(j.exit_code, 0)
      T.ok(fs.exists(j.run_dir .. "/results.json"), j.run_dir)
      local exp = EXPECTED[j.task].oracle
      T.eq(j.tests_passed, exp.tests_passed, j.task)
      T.eq(j.rubric_scores, exp.rubrics, j.task)
    end
    -- one start and one final finish per task
    local tl = tally(journal(bdir))
    for _, name in ipairs(NAMES) do
      T.eq(tl[name], {starts = 1, finals = 1, finishes = 1, status = "completed"}, name)
    end
    local meta = assert(json.decode_file(bdir .. "/batch.json"))
    T.eq(meta.tasks, NAMES)
    T.eq(meta.settings.agent, "oracle")
    T.eq(registry_ids(dir), {}, "sandboxes left in the registry")
  end))

T.test("--agent none: every score is the expected baseline; --format json on stdout",
  T.with_temp_dir(function(dir)
    local cfg = write_config(dir)
    local r = parallel(dir, {cfg, "--agent", "none", "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    local bdir = batch_dir(dir)
    T.eq(r.stdout, assert(fs.read(bdir .. "/summary.json")), "stdout is summary.json")
    local list = assert(json.decode(r.stdout))
    T.eq(#list, #NAMES)
    for _, j in ipairs(list) do
      local exp = EXPECTED[j.task].none
      T.eq(j.status, "completed", j.task)
      T.eq(j.score, exp.total_score, j.task .. " score")
      T.eq(j.rubric_scores, exp.rubrics, j.task .. " rubric scores")
      T.eq({j.tests_passed, j.tests_failed}, {exp.tests_passed, exp.tests_failed}, j.task .. " tests")
    end
  end))

T.test("--format csv on stdout, --output FILE (nothing but progress on the terminal)",
  T.with_temp_dir(function(dir)
    local cfg = write_config(dir, {tasks = {"fix-median-bug"}})
    local r = parallel(dir, {cfg, "--format", "csv"})
    T.eq(r.code, 0, r.stderr)
    local bdir = batch_dir(dir)
    T.eq(r.stdout, assert(fs.read(bdir .. "/summary.csv")))
    local rows = csv_records(r.stdout)
    T.eq(#rows, 1)
    T.eq({rows[1].Task, rows[1].Status, rows[1].Score}, {"fix-median-bug", "completed", "100.0"})
    assert(fs.remove_tree(dir .. "/results"))
    for _, bad in ipairs{dir, "/proc/nope/summary.json"} do
      r = parallel(dir, {cfg, "--format", "json", "--output", bad})
      T.eq(r.code, 2, "--output " .. bad)
      T.match(r.stderr, "%-%-output " .. bad:gsub("%p", "%%%0") .. ": ")
      T.eq(fs.list(dir .. "/results"), nil, "nothing ran")
    end
    -- its folder is made
    r = parallel(dir, {cfg, "--format", "json", "--output", "out/summary.json"})
    T.eq(r.code, 0, r.stderr)
    T.eq(r.stdout, "")
    T.match(r.stderr, "summary written to out/summary.json")
    bdir = batch_dir(dir)
    T.eq(assert(fs.read(dir .. "/out/summary.json")), assert(fs.read(bdir .. "/summary.json")))
    T.eq(assert(json.decode_file(dir .. "/out/summary.json"))[1].score, 1.0)
  end))

---------------------------------------------------------------------------------------------------
-- bad input

T.test("bad configs and flags: exit 2, the message names the file and the field, nothing written",
  T.with_temp_dir(function(dir)
    local good = {agents = "agents:\n  max_parallel: 2\n",
                  datasets = "datasets:\n  ex:\n    path: " .. TASKS .. "\n",
                  output = "output:\n  results_dir: " .. dir .. "/results\n"}
    local function config(name, parts)
      assert(fs.write(dir .. "/" .. name, table.concat(parts)))
      return name
    end
    local cases = {
      {{config("no-agents.yaml", {good.datasets, good.output})}, "no%-agents%.yaml: agents: missing section"},
      {{config("no-datasets.yaml", {good.agents, good.output})}, "no%-datasets%.yaml: datasets: missing section"},
      {{config("no-output.yaml", {good.agents, good.datasets})}, "no%-output%.yaml: output: missing section"},
      {{config("four.yaml", {"agents:\n  max_parallel: \"four\"\n", good.datasets, good.output})},
       "four%.yaml: agents%.max_parallel: expected a non%-negative integer, got 'four'"},
      {{config("rate.yaml", {"agents:\n  create_rate: 0\n", good.datasets, good.output})},
       "rate%.yaml: agents%.create_rate: must be above 0"},
      {{config("list.yaml", {"agents: [1, 2]\n", good.datasets, good.output})}, "list%.yaml: agents"},
      {{config("no-path.yaml", {good.agents, "datasets:\n  ex:\n    enabled: true\n", good.output})},
       "no%-path%.yaml: datasets%.ex%.path: missing"},
      {{config("syntax.yaml", {"agents: [\n"})}, "syntax%.yaml: invalid YAML at line"},
      {{"missing.yaml"}, "missing%.yaml"},
      {{config("empty.yaml", {good.agents, "datasets:\n  ex:\n    path: " .. dir .. "/empty\n", good.output})},
       "empty%.yaml: no tasks found in " .. (dir .. "/empty"):gsub("%p", "%%%0")},
      {{config("gone.yaml", {good.agents, "datasets:\n  ex:\n    path: " .. dir .. "/gone\n", good.output})},
       "gone%.yaml: datasets%.ex%.path: folder '[^']*/gone' does not exist"},
      {{"four.yaml", "--dataset", "ex"}, "four%.yaml"},
      {{config("ok.yaml", {good.agents, good.datasets, good.output}), "--dataset", "nope"},
       "%-%-dataset nope: not in ok%.yaml %(it has: ex%)"},
      {{"ok.yaml", "--format", "bogus"}, "%-%-format must be markdown, csv or json, not 'bogus'"},
      {{"ok.yaml", "--agent", "bogus"}, "unknown agent 'bogus'"},
      {{"ok.yaml", "--backend", "bogus"}, "%-%-backend.*unknown sandbox backend 'bogus'"},
      {{"ok.yaml", "--max-parallel", "0"}, "%-%-max%-parallel"},
      {{"ok.yaml", "--max-parallel", "four"}, "%-%-max%-parallel"},
      {{"ok.yaml", "--resume", dir}, "%-%-resume .*not a batch folder"},
      {{"ok.yaml", "--retries", "-1"}, "%-%-retries must be 0 or more"},
      {{"ok.yaml", "--timeout", "0"}, "%-%-timeout must be a positive"},
    }
    assert(fs.mkdir_p(dir .. "/empty/not-a-task"))
    for _, c in ipairs(cases) do
      local r = parallel(dir, c[1])
      local what = table.concat(c[1], " ")
      T.eq(r.code, 2, what .. ": " .. r.stderr)
      T.match(r.stderr, c[2], what)
      T.ok(not r.stderr:find("traceback"), what .. ": no traceback")
      T.eq(r.stdout, "", what)
      T.eq(fs.list(dir .. "/results"), nil, what .. ": no batch folder")
    end
  end))

T.test("a task with a broken tb_meta.json fails alone; the journal says why; the others run",
  T.with_temp_dir(function(dir)
    -- the example tasks find their repositories at ../../repos
    assert(fs.symlink(SRC .. "/examples/repos", dir .. "/repos"))
    local ds = dir .. "/tasks"
    for _, name in ipairs{"fix-median-bug", "broken"} do
      assert(fs.mkdir_p(ds .. "/" .. name))
      for _, f in ipairs(assert(fs.list(TASKS .. "/fix-median-bug"))) do
        assert(fs.copy_file(TASKS .. "/fix-median-bug/" .. f, ds .. "/" .. name .. "/" .. f))
      end
    end
    local text = assert(fs.read(ds .. "/broken/tb_meta.json"))
    assert(fs.write(ds .. "/broken/tb_meta.json", text:sub(1, #text // 2)))
    local cfg = write_config(dir, {path = ds})
    local r = parallel(dir, {cfg, "--format", "json"})
    T.eq(r.code, 0, r.stderr)   -- a failed task is a result, not an infrastructure error
    local list = assert(json.decode(r.stdout))
    T.eq(#list, 2)
    T.eq({list[1].task, list[1].status}, {"broken", "failed"})
    T.match(list[1].error, "broken/tb_meta%.json")
    T.eq({list[2].task, list[2].status, list[2].score}, {"fix-median-bug", "completed", 1.0})
    local bdir = batch_dir(dir)
    local recs = journal(bdir)
    local tl = tally(recs)
    T.eq(tl.broken, {starts = 1, finals = 1, finishes = 1, status = "failed"}, "not retried")
    for _, rec in ipairs(recs) do
      if rec.event == "finish" and rec.task == "broken" then
        T.match(rec.error, "tb_meta%.json: invalid JSON", "the journal records why")
      end
    end
    T.match(assert(fs.read(bdir .. "/summary.md")), "%*%*broken%*%*: [^\n]*tb_meta%.json")
  end))

---------------------------------------------------------------------------------------------------
-- retries: infrastructure errors only

-- A Lua config registering a backend whose first create calls fail (the count is in DIR/failures).
local function flaky_config(dir)
  local path = dir .. "/flaky.lua"
  assert(fs.write(path, ([=[
local sandbox = require "runbox.sandbox"
local errors = require "runbox.errors"
local fs = require "runbox.fs"
local real = assert(sandbox.get("local"))
local counter = %q
sandbox.register("flaky", {
  create = function(opts)
    local n = tonumber(fs.read(counter) or "0")
    if n > 0 then
      assert(fs.write(counter, tostring(n - 1)))
      return nil, errors.new("sandbox", "flaky: no capacity right now")
    end
    return real.create(opts)
  end,
  list = real.list, terminate_id = real.terminate_id,
})
return {agents = {backend = "flaky", max_parallel = 2},
        datasets = {ex = {path = %q, tasks = {"fix-median-bug"}}},
        output = {results_dir = %q}}
]=]):format(dir .. "/failures", TASKS, dir .. "/results")))
  return path
end

T.test("a sandbox error is retried with backoff; an agent that fails is a result, not retried",
  T.with_temp_dir(function(dir)
    local cfg = flaky_config(dir)
    assert(fs.write(dir .. "/failures", "1"))
    local r = parallel(dir, {cfg, "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    T.match(r.stderr, "fix%-median%-bug: sandbox_error %(flaky: no capacity right now%); retry 1/2 in 2s")
    local j = assert(json.decode(r.stdout))[1]
    T.eq({j.status, j.score}, {"completed", 1.0})
    local bdir = batch_dir(dir)
    local recs = journal(bdir)
    T.eq(tally(recs)["fix-median-bug"], {starts = 2, finals = 1, finishes = 2, status = "completed"})
    local first = recs[2]
    T.eq({first.event, first.status, first.final}, {"finish", "sandbox_error", false})
    assert(fs.remove_tree(dir .. "/results"))
    -- the agent fails: one attempt only
    r = parallel(dir, {cfg, "--agent", "cmd:echo no luck; exit 3", "--format", "csv"})
    T.eq(r.code, 0, r.stderr)
    local row = csv_records(r.stdout)[1]
    T.eq({row.Status, row["Exit Code"]}, {"failed", "3"})
    T.match(row.Error, "agent exited with status 3")
    T.eq(tally(journal(batch_dir(dir)))["fix-median-bug"].starts, 1)
  end))

T.test("retries used up: exit 1, and --resume tries the infrastructure error again",
  T.with_temp_dir(function(dir)
    local cfg = flaky_config(dir)
    assert(fs.write(dir .. "/failures", "1"))
    local r = parallel(dir, {cfg, "--retries", "0", "--format", "json"})
    T.eq(r.code, 1, r.stderr)
    T.eq(assert(json.decode(r.stdout))[1].status, "sandbox_error")
    local bdir = batch_dir(dir)
    T.match(r.stderr, "%-%-resume " .. bdir:gsub("%p", "%%%0") .. " tries them again")
    r = parallel(dir, {cfg, "--resume", bdir, "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    local j = assert(json.decode(r.stdout))
    T.eq(#j, 1)
    T.eq({j[1].status, j[1].score}, {"completed", 1.0})
    T.eq(tally(journal(bdir))["fix-median-bug"].starts, 2)
  end))

---------------------------------------------------------------------------------------------------
-- interruptions

T.test("SIGKILL mid-batch, then --resume: no sandbox left running, finished tasks not run again",
  T.with_temp_dir(function(dir)
    local cfg = write_config(dir)
    local agent, marker = slow_agent()
    local flags = {cfg, "--agent", agent, "--max-parallel", "2"}
    local p, reader = start_batch(dir, flags)
    local bdir = wait_midway(dir, #NAMES)
    p:kill(9)
    local code, how = p:wait(10)
    T.eq({code, how}, {137, "signal"})
    reader:wait()
    -- the sandboxes die with runbox (bwrap --die-with-parent)
    T.eq(none_left({bdir, marker}, 5), {}, "processes left by the killed batch")
    local before = tally(journal(bdir))
    local finished = {}
    for name, e in pairs(before) do if e.finals == 1 then finished[#finished + 1] = name end end
    T.ok(#finished >= 1 and #finished < #NAMES, "tasks finished before the kill: " .. #finished)
    local left = registry_ids(dir)
    print(("#   killed with %d task(s) finished, %d sandbox(es) registered"):format(#finished, #left))
    -- a record torn by the crash must not hide the ones appended after it
    assert(fs.append(bdir .. "/journal.jsonl", '{"event":"finish","task":"yaml-con'))
    local nlines = select(2, assert(fs.read(bdir .. "/journal.jsonl")):gsub("\n", ""))
    flags[#flags + 1] = "--resume"
    flags[#flags + 1] = bdir
    local r = parallel(dir, flags)
    T.eq(r.code, 0, r.stdout .. r.stderr)
    all_perfect(r.stdout, bdir)
    for _, id in ipairs(left) do
      T.match(r.stderr, "resume: terminated sandbox " .. id:gsub("%p", "%%%0"), "leftover sandbox reported")
    end
    T.eq(registry_ids(dir), {}, "registry after the resume")
    local recs = journal(bdir, {[nlines + 1] = true})
    local after = tally(recs)
    for _, name in ipairs(finished) do T.eq(after[name].starts, 1, name .. " ran again") end
    for _, name in ipairs(NAMES) do T.eq(after[name].finals, 1, name .. " final finishes") end
    local resume
    for _, rec in ipairs(recs) do if rec.event == "resume" then resume = rec end end
    T.ok(resume, "a resume record in the journal")
    table.sort(resume.terminated)
    T.eq(resume.terminated, left)
    T.eq(none_left({bdir, marker}, 0), {})
  end))

T.test("Ctrl-C mid-batch: exit 130 soon after cleaning up, then --resume (recorded settings) finishes",
  T.with_temp_dir(function(dir)
    local cfg = write_config(dir)
    local agent, marker = slow_agent()
    local p, reader = start_batch(dir, {cfg, "--agent", agent, "--max-parallel", "2"})
    local bdir = wait_midway(dir, #NAMES)
    local t0 = sched.now()
    p:kill(2)
    local code, how = p:wait(10)
    T.eq({code, how}, {130, "exit"})
    T.ok(sched.now() - t0 < 5, ("took %.1fs to stop"):format(sched.now() - t0))
    local _, out = reader:wait()
    T.match(out, "SIGINT received")
    T.match(out, "finish the batch with %-%-resume " .. bdir:gsub("%p", "%%%0"))
    T.eq(processes_with({bdir, marker}), {}, "processes left after Ctrl-C")
    T.eq(registry_ids(dir), {}, "sandboxes left in the registry")
    local before = tally(journal(bdir))
    local finished, cancelled = {}, 0
    for name, e in pairs(before) do
      if e.finals == 1 then finished[#finished + 1] = name end
      if e.starts > e.finals then cancelled = cancelled + 1 end
    end
    T.ok(#finished >= 1 and #finished < #NAMES, "tasks finished before Ctrl-C: " .. #finished)
    -- what finished is in the summaries written on the way out
    local partial = assert(json.decode_file(bdir .. "/summary.json"))
    local completed = 0
    for _, j in ipairs(partial) do if j.status == "completed" then completed = completed + 1 end end
    T.eq(completed, #finished)
    -- no --agent: the batch's own settings; more at once to finish sooner
    local r = parallel(dir, {cfg, "--resume", bdir, "--max-parallel", "5"})
    T.eq(r.code, 0, r.stdout .. r.stderr)
    all_perfect(r.stdout, bdir)
    T.match(r.stderr, "agent " .. agent:gsub("%p", "%%%0"))
    local after = tally(journal(bdir))
    for _, name in ipairs(finished) do T.eq(after[name].starts, 1, name .. " ran again") end
    for _, name in ipairs(NAMES) do T.eq(after[name].finals, 1, name) end
    T.eq(processes_with({bdir, marker}), {})
  end))

T.run()
