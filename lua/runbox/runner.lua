-- One run of one task, start to finish (DESIGN.md "One run, step by step"): resolve the task,
-- make the run folder, create the sandbox, set up the repository at the start commit, run the
-- agent under its time and token limits, capture the diff, evaluate, write the result files, and
-- terminate the sandbox whatever happened. Used by the run and parallel recipes.
local task = require "runbox.task"
local sandbox = require "runbox.sandbox"
local agent_mod = require "runbox.agent"
local meter = require "runbox.meter"
local eval = require "runbox.eval"
local report = require "runbox.report"
local judge = require "runbox.judge"
local log = require "runbox.log"
local fs = require "runbox.fs"
local json = require "runbox.json"
local util = require "runbox.util"
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local proc = require "runbox.proc"

local M = {}

M.defaults = {backend = "local", agent = "oracle", model = "gpt-5-mini", timeout = 1800,
              token_limit = nil, runs_dir = "data/runs", test_timeout = 300,
              upstream = nil}   -- the model endpoint; default $OPENAI_BASE_URL or OpenAI's

local VERSION_OK = {completed = true, failed = true, timeout = true, token_limit = true,
                    sandbox_error = true, cancelled = true}

local function now_iso() return util.iso8601() end

-- Runs a shell line in the sandbox; returns the result table (code, stdout, stderr) or nil, err.
local function sh(sb, line, opts)
  opts = opts or {}
  local p, err = sb:exec({"bash", "-c", line}, {cwd = opts.cwd or "/app/repo", env = opts.env,
                                                timeout = opts.timeout or 120})
  if not p then return nil, err end
  local guard <close> = p
  local r = proc.collect(p)      -- a stream that cannot be read raises
  if not r.code then
    -- a remote exec whose exit status was lost: the cause, not a nil further on
    return nil, r.how or errors.new("sandbox", "the command's exit status was lost")
  end
  return {code = r.code, how = r.how, stdout = r.stdout, stderr = r.stderr}
end

local GIT_ID = "git -c user.email=runbox@localhost -c user.name=runbox"

-- Streams a process's stdout and stderr into the sink; waits for both and the exit.
local function run_logged(p, sink, run)
  local a = log.pipe(p, "stdout", sink, {keep = 20})
  local b = log.pipe(p, "stderr", sink, {keep = 20})
  if run then run.pipes = {a, b} end
  a:wait()
  b:wait()
  local code, how = p:wait()
  return code, how, a, b
end

-- Cost in USD from usage and prices in USD per million tokens {input, cached_input, output};
-- nil without prices (runbox keeps no price list of its own: prices change, models come and go).
function M.cost(tokens, prices)
  if type(prices) ~= "table" or not prices.input or not prices.output then return nil end
  local cached = tokens.cached or 0
  local fresh = (tokens.input or 0) - cached
  local usd = (fresh * prices.input + cached * (prices.cached_input or prices.input)
               + (tokens.output or 0) * prices.output) / 1e6
  return math.floor(usd * 1e6 + 0.5) / 1e6
end

local Run = {}
Run.__index = Run

function Run:phase(name, detail)
  self.phase_name = name
  self.timings[name] = {start = sched.now()}
  if self.on_event then self.on_event{run = self, phase = name, detail = detail} end
  self.console:info("%s%s", name, detail and (": " .. detail) or "")
end

-- The agent's latest output line while it runs (for progress displays).
function Run:latest_line()
  for _, pipe in ipairs(self.pipes or {}) do
    local l = pipe:last_line()
    if l and l:match("%S") then return l end
  end
  return self.last_line
end

function Run:phase_done(name)
  local t = self.timings[name]
  if t then t.seconds = sched.now() - t.start; t.start = nil end
end

-- Run files are plain writes; results.json, which readers poll for, appears whole (a temp file
-- renamed into place). Durability is the batch journal's job (fsynced per record).
function Run:write_json(name, value, whole)
  local path = self.dir .. "/" .. name
  if whole then
    local tmp = path .. ".tmp"
    assert(fs.write(tmp, json.pretty(value)))
    assert(fs.rename(tmp, path))
  else
    assert(fs.write(path, json.pretty(value)))
  end
end

-- Terminates the sandbox, trying again for a while when that fails (a cloud sandbox left running
-- costs money until its own time limit); one that could not be stopped is named in the console
-- and in results.json (sandbox_left) with the command that stops it.
function Run:close_sandbox(sb)
  local last
  for attempt = 1, 4 do
    local tok, done, err = pcall(sb.terminate, sb)
    if tok and done then return true end
    last = tok and err or done
    if attempt < 4 then pcall(sched.sleep, attempt) end
  end
  self.sandbox_left = sb.id
  self.console:warn("sandbox %s could not be terminated (%s); it stops at its own time limit, or now with "
                    .. "`modal sandbox terminate %s`", tostring(sb.id), errors.message(last), tostring(sb.id))
  return false
end

-- The results.json record.
function Run:results()
  local timings = {}
  for k, v in pairs(self.timings) do timings[k] = v.seconds and math.floor(v.seconds * 1000 + 0.5) / 1000 end
  return {
    run_id = self.id, task_id = self.task and self.task.id, task_dir = self.task_dir,
    status = self.status, error = self.error,
    agent = {name = self.agent_name, model = self.model, exit_code = self.agent_exit, how = self.agent_how},
    start_time = self.start_time, end_time = self.end_time, timings = timings,
    tokens = self.tokens, score = self.score, tests = self.tests,
    has_changes = self.has_changes, backend = self.backend_name, sandbox_left = self.sandbox_left,
  }
end

-- Task files the agent must not see at /app: the reference solution (the oracle gets it on its
-- stdin), the task's notes (they list the files the solution changes) and, in tb_meta.json, the
-- evaluation (the hidden tests; they are written into the repository after the agent ran). A
-- --bootstrap run keeps the original layout: the task's own bootstrap script expects every file.
-- repo_info.json loses the end commit and the files it touches.
local WITHHELD = {["diff.patch"] = true, ["notes.md"] = true}
local TRIMMED = {["tb_meta.json"] = {"evaluation"}, ["repo_info.json"] = {"end_commit", "touched_files"}}

local function for_agent(name, text)
  local drop = TRIMMED[name]
  local doc = drop and json.decode(text)
  if type(doc) ~= "table" then return text end
  for _, key in ipairs(drop) do doc[key] = nil end
  return json.pretty(doc) .. "\n"
end

-- Sets up /app and the repository at the start commit, then a baseline commit.
function Run:setup(sb, t)
  self:phase("setup", t.repo.url)
  local slog = self.setup_log
  -- task files at /app (instructions, repo_info, tb_meta): a prepared task's overlay_files, or
  -- what `prepare` would write for a created one; less what the agent must not see
  local has_instructions
  local whole = self.opts.bootstrap
  if t.kind == "prepared" then
    local overlay = t.dir .. "/overlay_files"
    local exclude = {}
    for name in pairs(WITHHELD) do exclude[#exclude + 1] = "/" .. name end
    for name in pairs(TRIMMED) do exclude[#exclude + 1] = "/" .. name end
    assert(sb:put_dir(overlay, "/app", not whole and {exclude = exclude} or nil))
    for name in pairs(whole and {} or TRIMMED) do
      local text = fs.read(overlay .. "/" .. name)
      if text then assert(sb:write_file("/app/" .. name, for_agent(name, text))) end
    end
    has_instructions = t.instructions_file == overlay .. "/LM_INSTRUCTIONS.md"
  else
    -- made for the agent's eyes directly: the withheld files are not read, tb_meta.json is
    -- encoded without the evaluation
    local view = not whole and {skip = WITHHELD, drop = TRIMMED["tb_meta.json"]} or nil
    for _, f in ipairs(assert(task.overlay_files(t, view))) do
      local name, content = f[1], f[2]
      if name ~= "tb_meta.json" and not whole then content = for_agent(name, content) end
      assert(sb:write_file("/app/" .. name, content))
      if name == "LM_INSTRUCTIONS.md" then has_instructions = content == t.instructions end
    end
  end
  if not has_instructions then assert(sb:write_file("/app/LM_INSTRUCTIONS.md", t.instructions)) end
  if sb.host_path then
    -- cloned on the host: a fresh clone is clean, so its HEAD is the baseline (task files are in
    -- /app, outside the repository)
    local head, err = task.clone(t, sb:host_path("/app/repo"), {timeout = 600})
    if not head then return nil, err end
    if type(head) == "string" then
      self.baseline = head
      assert(fs.mkdir_p(sb:host_path("/app/artifacts")))
      self:phase_done("setup")
      return true
    end
  elseif t.repo.local_path then
    -- a repository on this machine (a folder, a bundle) that a remote sandbox cannot see: cloned
    -- here, then copied in; the baseline commit below catches any difference the copy made
    local tmp = self.dir .. "/.repo-clone"
    local head, err = task.clone(t, tmp, {timeout = 600})
    if not head then return nil, err end
    local ok, perr = sb:put_dir(tmp, "/app/repo")
    fs.remove_tree(tmp)
    if not ok then return nil, perr end
  else
    -- cloned inside the sandbox, from the network, by the same script as on the host
    local p, err = sb:exec(require("runbox.task.clone").argv(t, "/app/repo"),
                           {cwd = "/app", env = require("runbox.task.clone").env(), timeout = 600})
    if not p then return nil, err end
    local guard <close> = p
    local r = proc.collect(p)
    local code, stderr = r.code, r.stderr
    if code ~= 0 then
      local last = tostring(stderr or ""):match("([^\n]*%S[^\n]*)\n?$") or "no output"
      return nil, errors.new("task", ("%s: %s: %s '%s' (%s)"):format(t.meta_file,
                             code == 91 and t.repo.start_field or t.repo.field,
                             code == 91 and "start commit or branch not found in" or "cannot clone",
                             t.repo.url, last))
    end
  end
  local r = assert(sh(sb, GIT_ID .. " add -A && (" .. GIT_ID .. " diff --cached --quiet || " .. GIT_ID
                        .. " commit -q -m 'runbox baseline') && git rev-parse HEAD"))
  slog:line(r.stdout .. r.stderr)
  if r.code ~= 0 then return nil, errors.new("sandbox", "baseline commit failed: " .. r.stderr) end
  self.baseline = r.stdout:match("%x+")
  assert(sb:exec({"mkdir", "-p", "/app/artifacts"}, {cwd = "/app"})):wait()
  self:phase_done("setup")
  return true
end

-- Runs the agent; sets agent_exit/how and status on limits.
function Run:run_agent(sb, t, a)
  self:phase("agent", a.name)
  if not a.command then self:phase_done("agent"); return true end
  local ctx = {model = self.model, prompt = t.instructions, prompt_file = "/app/LM_INSTRUCTIONS.md",
               repo = "/app/repo", codex_bin = self.opts.codex_bin or self.codex_bin, reasoning_effort = self.opts.reasoning_effort,
               reference_patch = t.reference_patch}
  local m
  if a.uses_model and self.reaches_host == false then
    -- the sandbox cannot reach a proxy on this machine (a cloud sandbox): the agent talks to the
    -- endpoint itself with the key from its secret; tokens come from its own report afterwards
    ctx.base_url = self.opts.upstream or os.getenv("OPENAI_BASE_URL")
  elseif a.uses_model then
    local key = os.getenv("OPENAI_API_KEY")
    if key then log.redact(key) end
    ctx.api_token = "runbox-" .. util.random_hex(16)
    m = assert(meter.start{upstream = self.opts.upstream or os.getenv("OPENAI_BASE_URL") or "https://api.openai.com/v1",
                           api_key = key, client_token = ctx.api_token, token_limit = self.opts.token_limit,
                           traces_path = self.dir .. "/artifacts/traces.jsonl",
                           on_limit = function() self.limit_hit = true; if self.agent_proc then self.agent_proc:kill(9) end end})
    ctx.base_url = m.base_url
  end
  local meter_guard <close> = m
  for _, line in ipairs(a.setup or {}) do assert(sh(sb, line, {cwd = "/app"})) end
  local argv, env, stdin = a.command(ctx)
  local p, err = sb:exec(argv, {cwd = "/app/repo", env = env, timeout = self.opts.timeout, stdin = stdin})
  if not p then self:phase_done("agent"); return nil, err end
  self.agent_proc = p
  local guard <close> = p
  local watcher = a.watch_completion and sched.spawn(function() self:watch_completion(sb, p) end)
  local watch_guard <close> = setmetatable({}, {__close = function() if watcher then watcher:cancel() end end})
  local code, how, out, errout = run_logged(p, {self.agent_log, self.console_stream or nil}, self)
  self.pipes = nil
  self.agent_proc = nil
  self.agent_exit, self.agent_how = code, how
  if m then
    local u = m:usage()
    self.tokens = {input = u.input, output = u.output, cached = u.cached, reasoning = u.reasoning,
                   counted = u.counted, requests = u.requests, source = "proxy"}
    self.tokens.cost_usd = M.cost(self.tokens, self.opts.prices)
  end
  if a.name == "codex" and (not self.tokens or self.tokens.requests == 0) then
    -- codex ends stderr with "tokens used" and the count; in agent.log stdout's last message can
    -- land between the two lines, so stderr's own tail is read first
    local n = agent_mod.codex_tokens_from_log(table.concat(errout:tail(), "\n") .. "\n")
              or agent_mod.codex_tokens_from_log(fs.read(self.dir .. "/logs/agent.log") or "")
    if n then self.tokens = {counted = n, source = "codex log"} end
  end
  if self.limit_hit or (self.opts.token_limit and self.tokens and self.tokens.counted > self.opts.token_limit) then
    self.status = "token_limit"
  elseif how == "timeout" then
    self.status = "timeout"
  elseif code ~= 0 and not self.completion_seen then
    self.status, self.error = "failed", ("agent exited with status %d"):format(code)
  end
  self.last_line = out:last_line()
  self:phase_done("agent")
  return true
end

-- Bootstrap mode: ends the bootstrap a few seconds after it reports completion.
local function completion_written(sb)
  local path = "/app/artifacts/completion.json"
  local text
  if sb.host_path then
    text = fs.read(sb:host_path(path))
  else
    local r = sh(sb, "cat " .. path .. " 2>/dev/null", {cwd = "/app"})
    text = r and r.stdout
  end
  local v = text and json.decode(text)
  return type(v) == "table" and v.completed == true
end

function Run:watch_completion(sb, p)
  while p:running() do
    if completion_written(sb) then
      self.completion_seen = true
      sched.sleep(3)                      -- let it finish writing its artifacts
      if p:running() then p:kill(15); sched.sleep(5); if p:running() then p:kill(9) end end
      return
    end
    sched.sleep(1)
  end
end

function Run:capture_diff(sb)
  self:phase("diff")
  local r = assert(sh(sb, "git add -A && git diff --cached --binary " .. self.baseline
                        .. " > /app/artifacts/diff.patch; git status --porcelain=v1 > /app/artifacts/git_status.txt;"
                        .. " git reset -q; cat /app/artifacts/diff.patch"))
  self.diff = r.stdout
  self.has_changes = self.diff:match("%S") ~= nil
  self:phase_done("diff")
end

function Run:evaluate(sb, t)
  self:phase("eval", #t.test_scripts .. " test script(s)")
  local results, err = eval.run_tests(sb, t, {repo = "/app/repo", timeout = self.opts.test_timeout,
                                             log = function(line) self.eval_log:line(line) end})
  if not results then return nil, err end
  for _, ts in ipairs(t.test_scripts) do
    local res = results[ts.path]
    if res then self.eval_log:line(("%s %s (%.1fs)"):format(res.success and "PASSED" or "FAILED", ts.path, res.duration_sec or 0)) end
  end
  local lm
  if self.opts.judge then
    lm = judge.evaluate{model = self.opts.judge, task = t, diff = self.diff,
                        rubrics = eval.untested(t.rubrics, t.test_scripts)}
  end
  local evaluation = eval.score(t.rubrics, t.test_scripts, results, lm)
  self.evaluation, self.test_results = evaluation, results
  self.score = evaluation.total_score
  self.tests = {passed = evaluation.tests_passed, failed = evaluation.tests_failed}
  local info = {run_id = self.id}
  assert(fs.write(self.dir .. "/artifacts/test_output.txt", report.test_output(t, results)))
  self:write_json("evaluation_results.json",
                  report.evaluation_json(info, t, evaluation, results, self.diff, lm,
                                         {tokens_total = self.tokens and self.tokens.counted,
                                          time_taken_seconds = self.timings.agent and self.timings.agent.seconds}))
  assert(fs.write(self.dir .. "/scoring_results.md", report.markdown(info, t, evaluation, results, self.diff, lm)))
  self.block = report.results_block(info, t, evaluation, results, self.diff, lm)
  self:phase_done("eval")
  return true
end

-- Runs one task. opts: task_dir (required), backend, agent (name, "cmd:..." or table), model,
-- timeout (agent seconds), token_limit, run_id, runs_dir, judge (model), test_timeout, upstream,
-- codex_bin, tags (extra sandbox tags, e.g. {batch = id}), on_event(ev), quiet (no console echo),
-- prefix (console prefix). Returns the results table (results.json) and details {dir, evaluation,
-- test_results, finished}; never raises for a failed run.
function M.run(opts)
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  local self = setmetatable({opts = o, timings = {}, start_time = now_iso(), model = o.model,
                             backend_name = o.backend, on_event = o.on_event, task_dir = o.task_dir}, Run)
  local a, aerr = agent_mod.get(o.agent)
  if not a then errors.raise("usage", aerr) end
  if o.bootstrap then a = agent_mod.bootstrap() end
  self.agent_name = a.name

  -- 1. the task (a created task is prepared first, into the run folder's parent tree)
  local t, err = task.load(o.task_dir)
  -- 2. the run folder
  local id, dir = util.run_id(assert(fs.mkdir_p(o.runs_dir)) and o.runs_dir)
  if o.run_id then
    id, dir = o.run_id, o.runs_dir .. "/" .. o.run_id
    if fs.exists(dir) then errors.raise("usage", ("--run-id %s: %s already exists; pick another id"):format(id, dir)) end
    assert(fs.mkdir_p(dir))
  end
  self.id, self.dir = id, assert(fs.realpath(dir))
  for _, sub in ipairs{"logs", "artifacts"} do assert(fs.mkdir_p(self.dir .. "/" .. sub)) end
  local prefix = o.prefix or ("[" .. id .. "] ")
  self.console_stream = not o.quiet and assert(log.sink{console = true, prefix = prefix}) or nil
  self.console = self.console_stream or assert(log.sink{file = self.dir .. "/logs/runbox.log"})
  self.setup_log = assert(log.sink{file = self.dir .. "/logs/setup.log"})
  self.agent_log = assert(log.sink{file = self.dir .. "/logs/agent.log"})
  self.eval_log = assert(log.sink{file = self.dir .. "/logs/eval.log"})
  self:write_json("metadata.json", {run_id = id, task_dir = o.task_dir, agent = a.name, model = o.model,
                                    backend = o.backend, timeout = o.timeout, token_limit = o.token_limit or json.null,
                                    start_time = self.start_time, runbox_version = "0.1.0"})
  local sb
  local finished = false
  local ok, run_err = xpcall(function()
    -- a created task is run as its prepared form, made in memory (setup writes its files)
    if not t then self.status, self.error = "failed", errors.message(err); return end
    self.task = t
    if o.bootstrap then
      if not fs.exists(t.dir .. "/overlay_files/box_bootstrap.sh") then
        self.status, self.error = "failed", ("--bootstrap: %s/overlay_files/box_bootstrap.sh not found"):format(t.dir)
        return
      end
      a = agent_mod.bootstrap(t.id)
      self.agent_name = a.name
    end
    -- 3. the sandbox
    self:phase("sandbox", o.backend)
    local backend, berr = sandbox.get(o.backend)
    if not backend then self.status, self.error = "sandbox_error", "--backend: " .. errors.message(berr); return end
    local tags = {run = id}
    for k, v in pairs(o.tags or {}) do tags[k] = v end
    local create = {root = self.dir .. "/sandbox", workdir = "/app", network = t.network ~= false,
                    timeout = (o.timeout or 1800) + #t.test_scripts * o.test_timeout + 600, tags = tags}
    self.reaches_host = backend.reaches_host ~= false
    if backend.name == "modal" then
      local extra, merr = require("runbox.sandbox.modal_run").options{agent = a, run_id = id, task = t,
                                                                     config = o.modal, codex_bin = o.codex_bin}
      if not extra then self.status, self.error = "sandbox_error", errors.message(merr); return end
      for k, v in pairs(extra.create) do create[k] = v end
      create.on_log = function(line) self.setup_log:line(line) end
      self.codex_bin = extra.codex_bin
    end
    local serr
    sb, serr = backend.create(create)
    if not sb then
      self.status, self.error = "sandbox_error", errors.message(serr)
      if type(serr) == "table" and serr.reason == "build_failed" then
        -- the image's definition is at fault, not the infrastructure: a result, not retried
        local log_text = type(serr.cause) == "table" and serr.cause.log or serr.log
        if log_text then self.setup_log:line(log_text) end
        self.status = "failed"
        self.error = self.error .. " (the build log is in logs/setup.log)"
      end
      return
    end
    self:phase_done("sandbox")
    local sok, setup_err = self:setup(sb, t)
    if not sok then
      self.status = errors.is(setup_err, "task") and "failed" or "sandbox_error"
      self.error = errors.message(setup_err)
      return
    end
    local aok, agent_err = self:run_agent(sb, t, a)
    if not aok then self.status, self.error = "sandbox_error", errors.message(agent_err); return end
    self:capture_diff(sb)
    local eok, eval_err = self:evaluate(sb, t)
    if not eok then self.status, self.error = "failed", errors.message(eval_err); return end
    self.status = self.status or "completed"
    finished = true
  end, function(e)
    self.traceback = debug.traceback(errors.message(e), 2)
    return e
  end)
  -- 7/8. artifacts back, sandbox gone, result files written: whatever happened above
  if not ok then
    if errors.is(run_err, "cancelled") then self.status, self.error = "cancelled", "cancelled: " .. errors.message(run_err)
    else self.status, self.error = "sandbox_error", self.traceback or errors.message(run_err) end
  end
  if sb then
    if not self.reaches_host then
      -- a remote sandbox keeps its artifacts where `runbox fetch` finds them: the result goes too
      self.end_time = now_iso()
      local copy = self:results()
      copy.status = copy.status or "failed"
      local wok, wrote, werr = pcall(sb.write_file, sb, "/app/artifacts/results.json", json.pretty(copy))
      if not (wok and wrote) then
        self.console:warn("could not leave results.json on the volume: %s", errors.message(wok and werr or wrote))
      end
    end
    local gok, got, gerr = pcall(sb.get_tar, sb, "/app/artifacts", self.dir .. "/artifacts")
    if not gok or not got then
      self.console:warn("could not copy the sandbox's artifacts: %s%s", errors.message(gok and gerr or got),
                        self.reaches_host and "" or ("; `runbox fetch %s` gets them from the volume later"):format(self.id))
    end
    self:close_sandbox(sb)
  end
  self.end_time = now_iso()
  assert(VERSION_OK[self.status or "failed"])
  self.status = self.status or "failed"
  local results = self:results()
  self:write_json("results.json", results, true)
  if self.block and not o.quiet then print(self.block) end
  if not o.quiet then
    if self.error then self.console:error("%s: %s", self.status, self.error) end
    print("Run artifacts in: " .. self.dir)
  end
  -- the run's log files are closed now, not when the collector finds them: a batch would hold
  -- dozens open, and every process it starts copies them all
  for _, sink in ipairs{self.setup_log, self.agent_log, self.eval_log, self.console} do sink:close() end
  return results, {dir = self.dir, evaluation = self.evaluation, test_results = self.test_results, finished = finished}
end

return M
