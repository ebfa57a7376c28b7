-- Evaluation of a run: write the task's test scripts into the repository inside the sandbox, run
-- pytest once per script with its own time limit, and score the rubrics with the reference
-- formula (oneshot-format.md §3.6).
--
--   local results = assert(eval.run_tests(sb, t, {repo = "/app/repo", timeout = 300}))
--   local evaluation = eval.score(t.rubrics, t.test_scripts, results)
--
-- `sb` is anything with sb:exec(argv, {cwd=, env=, stdin=, timeout=}) returning a process with
-- the runbox.proc API (read, wait, close); every sandbox backend qualifies.
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local proc = require "runbox.proc"

local M = {}

M.defaults = {
  repo = "/app/repo",
  timeout = 300,              -- seconds per test script
  output_limit = 64 * 1024,   -- bytes kept of each stream (the end, where pytest's summary is)
  python = "python3",
  pytest_args = {"-q", "-p", "no:cacheprovider"},
  grace = 10,                 -- extra seconds before runbox kills a script the backend did not stop
  together = true,            -- one sandbox command runs the scripts in turn (not one per script)
}

local FIELD = "tb_meta.json evaluation.test_scripts[%d].path"

---------------------------------------------------------------------------------------------------
-- test script paths

-- Checks one path: relative, inside the repo, no "..". Returns the normalised path or nil, why.
local function normalise(path)
  if type(path) ~= "string" or path == "" then return nil, "is missing or empty" end
  if path:find("%z") or path:find("[\r\n]") then return nil, "contains a NUL or a line break" end
  if path:sub(1, 1) == "/" then return nil, ("'%s' is absolute"):format(path) end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then return nil, ("'%s' leaves the repository through '..'"):format(path) end
    if part ~= "." then parts[#parts + 1] = part end
  end
  if #parts == 0 or path:sub(-1) == "/" then return nil, ("'%s' does not name a file"):format(path) end
  return table.concat(parts, "/")
end

-- Checks every test script of the task: paths stay inside the repository and no two scripts share a
-- path (results are keyed by path). Returns true or nil, err (code "task") naming the field.
function M.validate(test_scripts)
  if type(test_scripts) ~= "table" then error("eval.validate: test_scripts must be a list", 2) end
  local seen = {}
  for i, ts in ipairs(test_scripts) do
    local field = FIELD:format(i)
    local norm, why = normalise(ts.path)
    if not norm then
      return nil, errors.new("task", ("%s: %s; use a path relative to the repository root, such as tests/test_x.py")
                                       :format(field, why), {field = field})
    end
    if seen[norm] then
      return nil, errors.new("task", ("%s: '%s' is also the path of test_scripts[%d]; each test script needs its own path")
                                       :format(field, ts.path, seen[norm]), {field = field})
    end
    seen[norm] = i
    if type(ts.content) ~= "string" then
      local cfield = ("tb_meta.json evaluation.test_scripts[%d].content"):format(i)
      return nil, errors.new("task", cfield .. ": missing; give the test file's text", {field = cfield})
    end
  end
  return true
end

---------------------------------------------------------------------------------------------------
-- bounded output

-- The kept end of a stream (at most `limit` bytes, starting at a line boundary when something was
-- cut), with a note of what was cut; `dropped` bytes were cut already.
local function tail_text(s, dropped, limit)
  if #s > limit then
    dropped = dropped + #s - limit
    s = s:sub(-limit)
  end
  if dropped > 0 then
    local nl = s:find("\n", 1, true)
    if nl and nl < #s then dropped, s = dropped + nl, s:sub(nl + 1) end
    s = ("[... %d bytes of output cut; the last %d bytes follow ...]\n"):format(dropped, #s) .. s
  end
  return s
end

local function close(p)
  if p and p.close then pcall(p.close, p) end
end

---------------------------------------------------------------------------------------------------
-- running

-- Shell run inside the sandbox to write one test file (its text on stdin; $1 the path, $2 the
-- python, used where realpath has no -m, as in busybox). It refuses a folder
-- that resolves outside the repository (a symlink the agent left) and replaces a symlink at the
-- file's own path instead of writing through it.
local WRITER = [[
set -e
root=$(pwd -P)
dir=$(dirname -- "$1")
real=$(realpath -m -- "$dir" 2>/dev/null ||
       "$2" -c 'import os, sys; print(os.path.realpath(sys.argv[1]))' "$dir")
case "$real/" in
  "$root"/*) ;;
  *) echo "runbox: the folder of $1 resolves to $real, outside the repository $root (a symlink?)" >&2; exit 3 ;;
esac
mkdir -p -- "$dir"
if [ -L "$1" ]; then rm -f -- "$1"; fi
cat > "$1"
]]

local function merged_env(o)
  local env = {PYTHONDONTWRITEBYTECODE = "1"}
  for k, v in pairs(o.env or {}) do env[k] = v end
  return env
end

-- Runs argv to its end in the sandbox with a time limit; returns code, how, stdout, stderr, secs.
local function run_cmd(sb, argv, o, stdin, timeout)
  local t0 = sched.now()
  -- stdin goes through a pipe (a string option would be ambiguous for a file saying "pipe")
  local p, err = sb:exec(argv, {cwd = o.repo, env = merged_env(o), stdin = stdin and "pipe" or nil, timeout = timeout})
  if not p then return nil, err end
  local feeder = stdin and sched.spawn(function()
    p:write(stdin)      -- a reader that exits early makes this fail: its exit status says why
    p:close_stdin()
  end)
  local guard <close> = setmetatable({}, {__close = function()
    if feeder then feeder:cancel("command ended") end
    close(p)
  end})
  local r = proc.collect(p, {limit = o.output_limit, timeout = timeout + o.grace})
  local code, how = r and r.code, r and r.how
  if not r then
    -- the backend did not stop it at its limit: runbox does, and keeps what it printed
    pcall(p.kill, p, 9)
    r = proc.collect(p, {limit = o.output_limit, timeout = 5}) or {stdout = "", stderr = ""}
    code, how = nil, "timeout"
  end
  return {code = code, how = how, secs = sched.now() - t0,
          stdout = tail_text(r.stdout, r.stdout_dropped or 0, o.output_limit),
          stderr = tail_text(r.stderr, r.stderr_dropped or 0, o.output_limit)}
end

local function join_output(r)
  local s = r.stdout
  if r.stderr ~= "" then
    if s ~= "" and s:sub(-1) ~= "\n" then s = s .. "\n" end
    s = s .. "--- stderr ---\n" .. r.stderr
  end
  return s
end

local function write_script(sb, ts, o)
  if sb.write_file then
    -- the backend writes files itself (the local one from the host side: no process to start)
    local ok, err = sb:write_file(o.repo .. "/" .. ts.path, ts.content)
    if not ok then return nil, ("could not write %s into the repository: %s"):format(ts.path, errors.message(err)) end
    return true
  end
  local r, err = run_cmd(sb, {"sh", "-c", WRITER, "sh", ts.path, o.python}, o, ts.content, 60)
  if not r then return nil, "could not start the writer: " .. errors.message(err) end
  if r.how ~= "exit" or r.code ~= 0 then
    local msg = (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")
    return nil, ("could not write %s into the repository (%s %s): %s"):format(ts.path, r.how, tostring(r.code), msg)
  end
  return true
end

local function pytest_argv(o)
  local argv = {o.python, "-m", "pytest"}
  for _, a in ipairs(o.pytest_args) do argv[#argv + 1] = a end
  return argv
end

local function log_start(ts, o)
  if o.log then o.log(("[eval] running %s (time limit %gs)"):format(ts.path, o.timeout)) end
end

-- A script's result from its command's end (r: code, how, stdout, stderr, secs), or nil, err
-- when pytest could not be started.
local function script_result(ts, r, err, o)
  if not r then
    return {success = false, output = "runbox: could not start pytest: " .. errors.message(err),
            duration_sec = 0.0, timed_out = false}
  end
  local timed_out = r.how == "timeout"
  local output = join_output(r)
  if timed_out then
    if output ~= "" and output:sub(-1) ~= "\n" then output = output .. "\n" end
    output = output .. ("[runbox] %s timed out after %gs; pytest was stopped\n"):format(ts.path, o.timeout)
  end
  local res = {success = r.how == "exit" and r.code == 0, output = output, exit_code = r.code,
               duration_sec = math.floor(r.secs * 1000 + 0.5) / 1000, timed_out = timed_out}
  if o.log then
    o.log(("[eval] %s: %s in %.1fs"):format(ts.path, res.success and "PASSED" or (timed_out and "TIMED OUT" or
          "FAILED (exit " .. tostring(r.code) .. ")"), res.duration_sec))
  end
  return res
end

local function run_script(sb, ts, o)
  local argv = pytest_argv(o)
  argv[#argv + 1] = ts.path
  log_start(ts, o)
  local r, err = run_cmd(sb, argv, o, nil, o.timeout)
  return script_result(ts, r, err, o)
end

-- The scripts through one sandbox command (eval/together.lua); a script the runner did not
-- finish gets a failed result that says why.
local function run_together(sb, scripts, o)
  local eo = {repo = o.repo, env = merged_env(o), timeout = o.timeout, grace = o.grace, output_limit = o.output_limit}
  local results = {}
  local why = require("runbox.eval.together").run(sb, scripts, pytest_argv(o), eo,
    function(ts) log_start(ts, o) end,
    function(ts, r)
      r.stdout = tail_text(r.stdout, r.stdout_dropped or 0, o.output_limit)
      r.stderr = tail_text(r.stderr, r.stderr_dropped or 0, o.output_limit)
      results[ts.path] = script_result(ts, r, nil, o)
    end)
  for _, ts in ipairs(scripts) do
    if not results[ts.path] then
      if o.log then o.log(("[eval] %s: not run to its end: %s"):format(ts.path, why)) end
      results[ts.path] = {success = false, output = "runbox: " .. why, duration_sec = 0.0, timed_out = false}
    end
  end
  return results
end

local function options(opts)
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  if type(o.timeout) ~= "number" or o.timeout <= 0 then error("eval.run_tests: timeout must be positive seconds", 3) end
  if o.log ~= nil and type(o.log) ~= "function" then error("eval.run_tests: log must be a function", 3) end
  return o
end

-- Writes every test script of task t into the repository, then runs pytest on each, one after the
-- other (or `opts.parallel` at once); one after the other, through one sandbox command unless
-- `opts.together` is false. Returns {[path] = {success, output, duration_sec, exit_code,
-- timed_out}} or nil, err when a test script path is invalid (nothing is run then).
function M.run_tests(sb, t, opts)
  if type(sb) ~= "table" and type(sb) ~= "userdata" then error("eval.run_tests: sandbox expected", 2) end
  if type(t) ~= "table" then error("eval.run_tests: task expected", 2) end
  local o = options(opts)
  local scripts = t.test_scripts or {}
  local ok, err = M.validate(scripts)
  if not ok then return nil, err end
  local results = {}
  local runnable = {}
  for _, ts in ipairs(scripts) do
    local wrote, why = write_script(sb, ts, o)
    if wrote then
      runnable[#runnable + 1] = ts
    else
      if o.log then o.log("[eval] " .. why) end
      results[ts.path] = {success = false, output = "runbox: " .. why, duration_sec = 0.0, timed_out = false}
    end
  end
  local width = o.parallel == true and #runnable or tonumber(o.parallel) or 1
  if width <= 1 and o.together and #runnable > 1 then
    for path, res in pairs(run_together(sb, runnable, o)) do results[path] = res end
  elseif width <= 1 then
    for _, ts in ipairs(runnable) do results[ts.path] = run_script(sb, ts, o) end
  else
    local sem = sched.semaphore(width)
    sched.scope(function(s)
      for _, ts in ipairs(runnable) do
        s:spawn(function() results[ts.path] = sem:with(run_script, sb, ts, o) end)
      end
    end)
  end
  return results
end

---------------------------------------------------------------------------------------------------
-- scoring

local function is_num(v) return type(v) == "number" and v == v end

-- The rubrics that have no test script: those the LLM judge may score.
function M.untested(rubrics, test_scripts)
  local has = {}
  for _, ts in ipairs(test_scripts or {}) do has[ts.rubric_id] = true end
  local out = {}
  for _, r in ipairs(rubrics or {}) do
    if not has[r.id] then out[#out + 1] = r end
  end
  return out
end

-- Judged scores from an lm_evaluation table, only when the judge succeeded.
local function judged_scores(lm)
  if type(lm) ~= "table" or lm.error or type(lm.rubric_scores) ~= "table" then return {} end
  local out = {}
  for _, rs in ipairs(lm.rubric_scores) do
    if is_num(rs.score) and rs.score >= 0 and rs.score <= 1 then out[rs.rubric_id] = rs.score end
  end
  return out
end

-- Scores rubrics from test results (§3.6): a rubric's score is passed/count of its test scripts,
-- nil when it has none; weighted_score = score * weight; total_score = the sum of weighted scores
-- over scored rubrics divided by the sum of ALL weights (0 when that sum is 0).
-- With lm_evaluation from a judge that succeeded, rubrics without tests take the judge's score
-- (score_source "judge"); a failed judge changes nothing.
function M.score(rubrics, test_scripts, results, lm_evaluation)
  if type(rubrics) ~= "table" then error("eval.score: rubrics must be a list", 2) end
  test_scripts, results = test_scripts or {}, results or {}
  local judged = judged_scores(lm_evaluation)
  local out = {rubrics = {}, max_score = 1.0, tests_passed = 0, tests_failed = 0}
  local total_weight, earned = 0, 0.0
  local seen = {}
  for i, r in ipairs(rubrics) do
    if type(r.id) ~= "string" then error(("eval.score: rubrics[%d].id must be a string"):format(i), 2) end
    if seen[r.id] then error(("eval.score: rubrics[%d].id '%s' repeats rubrics[%d]"):format(i, r.id, seen[r.id]), 2) end
    seen[r.id] = i
    if not is_num(r.weight) then error(("eval.score: rubrics[%d].weight must be a number"):format(i), 2) end
    local count, passed = 0, 0
    for _, ts in ipairs(test_scripts) do
      if ts.rubric_id == r.id then
        count = count + 1
        local res = results[ts.path]
        if res and res.success == true then passed = passed + 1 end
      end
    end
    local entry = {criterion = r.criterion, weight = r.weight, max_score = 1.0, test_count = count,
                   tests_passed = passed}
    if count > 0 then
      entry.score, entry.score_source = passed / count, "tests"
    elseif judged[r.id] then
      entry.score, entry.score_source = judged[r.id] + 0.0, "judge"
    end
    if entry.score then
      entry.weighted_score = entry.score * r.weight
      earned = earned + entry.weighted_score
    end
    total_weight = total_weight + r.weight
    out.rubrics[r.id] = entry
  end
  out.total_score = total_weight > 0 and earned / total_weight or 0.0
  for _, ts in ipairs(test_scripts) do
    local res = results[ts.path]
    if res and res.success == true then out.tests_passed = out.tests_passed + 1
    else out.tests_failed = out.tests_failed + 1 end
  end
  return out
end

return M
