-- A batch: many task runs at once with a bound on parallelism, a sandbox-creation rate limit,
-- retries with backoff for infrastructure errors only, an append-only journal (fsync per record)
-- that lets `--resume` finish a batch after a crash, and summaries in markdown, CSV and JSON.
--
-- Config (YAML, the original schema, or a Lua file returning the same table):
--   agents:   {model, timeout_sec, token_limit, max_parallel (5), agent (oracle), backend (local),
--              retries (2), create_rate (5 per second), test_timeout (300)}
--   datasets: {NAME: {enabled (true), path, tasks ([] = every folder with a tb_meta.json, sorted)}}
--   output:   {results_dir, save_artifacts (true)}
--   modal:    {image (a registry tag, or {registry, commands}), cpu, memory (MiB), app}: the modal
--             backend's sandboxes (a task's tb_meta `sandbox` object overrides them)
-- Relative paths are relative to the folder runbox runs in, as with the original runner (but no
-- `cd scripts` is needed: runbox runs from anywhere).
--
-- The batch folder: batch.json (id, config, settings, tasks), journal.jsonl (start / finish /
-- resume records), runs/<run_id>/, summary.md/.csv/.json. --resume DIR reuses the recorded
-- settings where no flag overrides them, first terminates the sandboxes tagged with the batch id
-- that a killed runbox left, keeps every task whose final finish record holds a result (completed,
-- failed, timeout, token_limit), and runs the others (never started, cancelled, interrupted,
-- sandbox_error). Ctrl-C cancels the runs, writes the summaries of what finished, and re-raises.
local yaml = require "runbox.yaml"
local json = require "runbox.json"
local fs = require "runbox.fs"
local util = require "runbox.util"
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local task = require "runbox.task"
local runner = require "runbox.runner"
local report = require "runbox.report"
local sandbox = require "runbox.sandbox"
local agent_mod = require "runbox.agent"

local M = {}

local function bad(file, field, message)
  return nil, errors.new("config", ("%s: %s: %s"):format(file, field, message), {path = file, field = field})
end

-- A YAML mapping (a Lua table that is not a non-empty list).
local function mapping(v) return type(v) == "table" and (#v == 0 or next(v, #v) ~= nil) end

local function absolute(base, p)
  if p:sub(1, 1) == "/" then return p end
  return base .. "/" .. p
end

-- Loads and checks a config file; returns the normalised config or nil, err naming file and field.
function M.load_config(path)
  local raw, err
  if path:match("%.lua$") then
    local chunk, lerr = loadfile(path, "t", setmetatable({}, {__index = _G}))
    if not chunk then return nil, errors.new("config", lerr, {path = path}) end
    local ok, v = pcall(chunk)
    if not ok then return nil, errors.new("config", ("%s: %s"):format(path, errors.message(v)), {path = path}) end
    raw = v
  else
    raw, err = yaml.decode_file(path)
    if raw == nil then return nil, err end
  end
  if not mapping(raw) then return bad(path, "(top)", "expected a mapping with agents, datasets and output") end
  local base = assert(fs.realpath("."))
  local cfg = {file = path, base = base}
  local a = raw.agents
  if a == nil then return bad(path, "agents", "missing section (agents: {model, timeout_sec, ...})") end
  if not mapping(a) then return bad(path, "agents", "expected a mapping (model, timeout_sec, max_parallel, ...)") end
  local function num(key, default, integer)
    local v = a[key]
    if v == nil then return default end
    if type(v) ~= "number" or v < 0 or (integer and math.type(v) ~= "integer") then
      return nil, ("expected a non-negative %s, got %s"):format(integer and "integer" or "number",
                                                               type(v) == "string" and ("'" .. v .. "'") or tostring(v))
    end
    return v
  end
  local agents = {}
  for key, spec in pairs{timeout_sec = {1800}, token_limit = {nil, true}, max_parallel = {5, true},
                         retries = {2, true}, create_rate = {5}, test_timeout = {300}} do
    local v, why = num(key, spec[1], spec[2])
    if why then return bad(path, "agents." .. key, why) end
    agents[key] = v
  end
  for _, key in ipairs{"model", "agent", "backend"} do
    if a[key] ~= nil and type(a[key]) ~= "string" then return bad(path, "agents." .. key, "expected a string") end
  end
  agents.model = a.model or "gpt-5-mini"
  agents.agent = a.agent or "oracle"
  agents.backend = a.backend or "local"
  if agents.max_parallel < 1 then return bad(path, "agents.max_parallel", "must be at least 1") end
  if agents.create_rate <= 0 then return bad(path, "agents.create_rate", "must be above 0 (sandboxes created per second)") end
  cfg.agents = agents
  if not mapping(raw.datasets) or next(raw.datasets) == nil then
    return bad(path, "datasets", "missing section (datasets: {NAME: {path: folder of tasks}})")
  end
  cfg.datasets = {}
  for name, d in pairs(raw.datasets) do
    local field = "datasets." .. tostring(name)
    if not mapping(d) then return bad(path, field, "expected a mapping with path") end
    if type(d.path) ~= "string" then return bad(path, field .. ".path", "missing (the folder holding the tasks)") end
    if d.tasks ~= nil and type(d.tasks) ~= "table" then return bad(path, field .. ".tasks", "expected a list of task folder names") end
    if d.enabled ~= nil and type(d.enabled) ~= "boolean" then return bad(path, field .. ".enabled", "expected true or false") end
    cfg.datasets[name] = {name = name, enabled = d.enabled ~= false, path = absolute(base, d.path), tasks = d.tasks or {}}
  end
  local o = raw.output
  if not mapping(o) then return bad(path, "output", "missing section (output: {results_dir: folder})") end
  if type(o.results_dir) ~= "string" then return bad(path, "output.results_dir", "missing (where batch folders go)") end
  cfg.output = {results_dir = absolute(base, o.results_dir), save_artifacts = o.save_artifacts ~= false}
  local m = raw.modal
  if m ~= nil then
    if not mapping(m) then return bad(path, "modal", "expected a mapping (image, cpu, memory, app)") end
    if m.image ~= nil then
      if type(m.image) == "string" then m.image = {registry = m.image} end
      if not mapping(m.image) or type(m.image.registry) ~= "string" then
        return bad(path, "modal.image", "expected a registry tag, or a mapping with registry and commands")
      end
      if m.image.commands ~= nil then
        if type(m.image.commands) ~= "table" then return bad(path, "modal.image.commands", "expected a list of Dockerfile lines") end
        for i, c in ipairs(m.image.commands) do
          if type(c) ~= "string" then return bad(path, ("modal.image.commands[%d]"):format(i - 1), "expected a Dockerfile line") end
        end
      end
    end
    if m.cpu ~= nil and (type(m.cpu) ~= "number" or m.cpu <= 0) then return bad(path, "modal.cpu", "expected a positive number of cores") end
    if m.memory ~= nil and (math.type(m.memory) ~= "integer" or m.memory <= 0) then
      return bad(path, "modal.memory", "expected a whole number of MiB")
    end
    if m.app ~= nil and type(m.app) ~= "string" then return bad(path, "modal.app", "expected an app name") end
    cfg.modal = {image = m.image, cpu = m.cpu, memory = m.memory, app = m.app}
  end
  return cfg
end

-- The task folders of the enabled datasets (or of one), sorted within each dataset.
function M.discover(cfg, only)
  local out, problems = {}, {}
  local names = {}
  for name in pairs(cfg.datasets) do names[#names + 1] = name end
  table.sort(names)
  if only and not cfg.datasets[only] then
    return nil, errors.new("usage", ("--dataset %s: not in %s (it has: %s)"):format(only, cfg.file, table.concat(names, ", ")))
  end
  for _, name in ipairs(names) do
    local d = cfg.datasets[name]
    if (only and name == only) or (not only and d.enabled) then
      if #d.tasks > 0 then
        for _, t in ipairs(d.tasks) do out[#out + 1] = {name = tostring(t), dir = d.path .. "/" .. tostring(t), dataset = name} end
      else
        local st = fs.stat(d.path)
        local dirs, err
        if not st or st.type ~= "dir" then
          err = ("folder '%s' does not exist"):format(d.path)
        else
          dirs, err = task.discover(d.path)
        end
        if not dirs then problems[#problems + 1] = ("%s: datasets.%s.path: %s"):format(cfg.file, name, errors.message(err))
        else for _, dir in ipairs(dirs) do out[#out + 1] = {name = dir:match("[^/]+$"), dir = dir, dataset = name} end end
      end
    end
  end
  return out, problems
end

-- The journal: one JSON object per line, never rewritten. An append returns once its record is
-- on disk; the records that tasks append while other ready tasks still run share one fsync (a
-- run's finish and the next run's start, the first runs' starts). The file stays open for the
-- batch (journal_open; closed with the batch).
local function journal_open(path)
  return setmetatable({path = path, file = assert(fs.appender(path))},
                      {__close = function(j) j.file:close() end})
end

local function journal_append(j, rec)
  rec.ts = util.iso8601()
  assert(j.file:write(json.encode(rec) .. "\n"))
  local c = j.commit
  if not c then
    c = {done = sched.event()}
    j.commit = c
    sched.spawn(function()
      sched.shielded(sched.yield)
      j.commit = nil
      c.ok, c.err = j.file:sync()
      c.done:set()
    end)
  end
  sched.shielded(c.done.wait, c.done)   -- a Ctrl-C now must not leave the record unsynced
  assert(c.ok, c.err)
end

local RETRY = {sandbox_error = true}
local FINAL = {completed = true, failed = true, timeout = true, token_limit = true}

-- Reads a journal; returns {task_name = last finish record} for runs that ended with a result
-- (an infrastructure error is not one: --resume tries those again). A torn last line (a crash
-- mid-write) is ended with a newline first, so the records appended after it stay readable.
local function finished_tasks(path)
  local done = {}
  local text = fs.read(path) or ""
  if text ~= "" and text:sub(-1) ~= "\n" then assert(fs.append(path, "\n", {fsync = true})) end
  for line in text:gmatch("[^\n]+") do
    local rec = json.decode(line)   -- a torn line decodes to nil: ignored
    if type(rec) == "table" and rec.event == "finish" and rec.final and FINAL[rec.status] then done[rec.task] = rec end
  end
  return done
end

-- The settings of a batch: flags (opts) over, on --resume, the batch's recorded settings, over
-- the config.
local function batch_settings(opts, cfg, recorded)
  local a, r = cfg.agents, recorded or {}
  local function pick(key, flag, default)
    if opts[flag] ~= nil then return opts[flag] end
    if r[key] ~= nil then return r[key] end
    return default
  end
  return {agent = pick("agent", "agent", a.agent), model = pick("model", "model", a.model),
          timeout = pick("timeout", "timeout", a.timeout_sec), token_limit = pick("token_limit", "token_limit", a.token_limit),
          backend = pick("backend", "backend", a.backend), max_parallel = pick("max_parallel", "max_parallel", a.max_parallel),
          retries = pick("retries", "retries", a.retries), create_rate = pick("create_rate", "create_rate", a.create_rate),
          test_timeout = pick("test_timeout", "test_timeout", a.test_timeout), judge = pick("judge", "judge", nil)}
end

-- Opens an earlier batch for --resume: {id, settings, done}, or nil, err.
local function open_batch(dir)
  local meta, err = json.decode_file(dir .. "/batch.json")
  if type(meta) ~= "table" or type(meta.id) ~= "string" then
    return nil, errors.new("usage", ("--resume %s: not a batch folder (%s)"):format(dir,
                           meta and "batch.json has no id" or errors.message(err)))
  end
  return {id = meta.id, settings = type(meta.settings) == "table" and meta.settings or {},
          done = finished_tasks(dir .. "/journal.jsonl")}
end

-- Terminates the sandboxes tagged with the batch id that a killed runbox left; returns their ids.
local function terminate_leftovers(backend, id, say)
  local ids = {}
  for _, sb in ipairs(backend.list{tags = {batch = id}} or {}) do
    local ok, err = backend.terminate_id(sb.id)
    if ok then
      ids[#ids + 1] = sb.id
      say(("resume: terminated sandbox %s left by the previous run%s"):format(sb.id, sb.alive and " (it was still running)" or ""))
    else
      say(("resume: cannot terminate sandbox %s: %s"):format(sb.id, errors.message(err)))
    end
  end
  return ids
end

-- A summary record from a journal finish record (or a run's results).
-- The summary record of a finished run: only what the summaries show, so a batch of thousands
-- of runs does not keep every run's test output in memory (the journal has it all).
local function record_of(name, r)
  return report.record{task = name, run_id = r.run_id, run_dir = r.run_dir, status = r.status,
                       duration = r.duration, exit_code = r.exit_code, error = r.error,
                       evaluation = r.evaluation, results = r.test_results}
end

-- Writes summary.md/.csv/.json into the batch folder; returns the texts by format.
local function write_summaries(dir, recs, t0)
  recs = report.sorted(recs)
  local info = {run_time = util.iso8601(), wall_time = sched.now() - t0}
  local outputs = {markdown = report.summary_markdown(recs, info), csv = report.summary_csv(recs),
                   json = report.summary_json(recs)}
  assert(fs.write_atomic(dir .. "/summary.md", outputs.markdown))
  assert(fs.write_atomic(dir .. "/summary.csv", outputs.csv))
  assert(fs.write_atomic(dir .. "/summary.json", outputs.json))
  return recs, outputs
end

-- Runs one task with retries for infrastructure errors; holds a slot of sem only while a run
-- goes on (not during the backoff). Hands each final (or cancelled) record to ctx.finished.
local function run_task(tk, ctx)
  local settings, journal, say = ctx.settings, ctx.journal, ctx.say
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res, details, duration = ctx.sem:with(function()
      ctx.bucket:take()
      journal_append(journal, {event = "start", task = tk.name, attempt = attempt})
      local started = sched.now()
      local r, d = runner.run{task_dir = tk.dir, backend = settings.backend, agent = settings.agent,
                              model = settings.model, timeout = settings.timeout,
                              token_limit = settings.token_limit, runs_dir = ctx.dir .. "/runs",
                              test_timeout = settings.test_timeout, judge = settings.judge,
                              tags = {batch = ctx.id}, quiet = true, modal = ctx.modal,
                              on_event = ctx.board and function(ev)
                                if ev.phase == "prepare" or ev.phase == "sandbox" then ctx.board:started(tk.name, ev.run) end
                              end}
      return r, d, sched.now() - started
    end)
    local final = res.status ~= "cancelled" and (FINAL[res.status] ~= nil or not RETRY[res.status]
                                                 or attempt > settings.retries)
    local rec = {task = tk.name, run_id = res.run_id, run_dir = details and details.dir, status = res.status,
                 duration = duration, exit_code = res.agent and res.agent.exit_code, error = res.error,
                 score = res.score, evaluation = details and details.evaluation,
                 test_results = details and details.test_results}
    local entry = {event = "finish", attempt = attempt, final = final}
    for k, v in pairs(rec) do entry[k] = v end
    journal_append(journal, entry)
    if final or res.status == "cancelled" then
      ctx.finished(tk, rec)
      return
    end
    local wait = math.min(60, 2 ^ attempt)
    say(("%s: %s (%s); retry %d/%d in %ds"):format(tk.name, res.status, tostring(res.error),
                                                 attempt, settings.retries, wait))
    sched.sleep(wait)
  end
end

-- Runs a batch. opts: config (loaded), dataset, max_parallel, agent, model, timeout, backend,
-- retries, resume (batch dir), on_line(text) (progress), judge. On --resume the batch's recorded
-- settings apply where no flag is given. Returns {dir, id, records, outputs (summary text by
-- format), infra_errors} or nil, err (code "usage" or "config": bad input; nothing was written).
-- Interrupted (Ctrl-C), it writes the summaries of what finished and raises the cancellation.
function M.run(opts)
  local cfg = opts.config
  local board
  local plain_say = opts.on_line or function(text) io.stdout:write(text, "\n"); io.stdout:flush() end
  -- on a terminal (opts.board), event lines scroll above a live board instead
  local say = function(text)
    if board then board.notes[#board.notes + 1] = text else plain_say(text) end
  end
  local prev
  if opts.resume then
    local err
    prev, err = open_batch(opts.resume)
    if not prev then return nil, err end
  end
  local settings = batch_settings(opts, cfg, prev and prev.settings)
  -- bad input is refused before anything is written
  local ok_agent, aerr = agent_mod.get(settings.agent)
  if not ok_agent then return nil, errors.new("usage", ("--agent / agents.agent: %s"):format(aerr)) end
  local backend, berr = sandbox.get(settings.backend)
  if not backend then return nil, errors.new("usage", ("--backend / agents.backend: %s"):format(errors.message(berr))) end
  local tasks, problems = M.discover(cfg, opts.dataset)
  if not tasks then return nil, problems end
  if #problems > 0 then return nil, errors.new("config", table.concat(problems, "\n")) end
  if #tasks == 0 then
    local where = {}
    for name, d in pairs(cfg.datasets) do
      if (opts.dataset and name == opts.dataset) or (not opts.dataset and d.enabled) then where[#where + 1] = d.path end
    end
    table.sort(where)
    return nil, errors.new("config", ("%s: no tasks found in %s (a task is a folder with a tb_meta.json; "
                                      .. "check datasets.NAME.path, .tasks and .enabled)")
                                     :format(cfg.file, #where > 0 and table.concat(where, ", ") or "any enabled dataset"))
  end
  local dir, id, done, journal
  if prev then
    dir, id, done = assert(fs.realpath(opts.resume)), prev.id, prev.done
    journal = journal_open(dir .. "/journal.jsonl")
    -- sandboxes the killed batch left behind go first
    local left = terminate_leftovers(backend, id, say)
    journal_append(journal, {event = "resume", terminated = json.array(left), settings = settings})
  else
    assert(fs.mkdir_p(cfg.output.results_dir))
    id, dir = util.run_id(cfg.output.results_dir)
    dir, done = assert(fs.realpath(dir)), {}
    journal = journal_open(dir .. "/journal.jsonl")
    local names = json.array()
    for i, t in ipairs(tasks) do names[i] = t.name end
    assert(json.encode_file(dir .. "/batch.json", {id = id, config = fs.realpath(cfg.file) or cfg.file,
                                                   created = util.iso8601(), settings = settings, tasks = names},
                            {pretty = true}))
  end
  local journal_guard <close> = journal
  say(("batch %s: %d task(s), %d at a time, agent %s, backend %s"):format(id, #tasks, settings.max_parallel,
                                                                           tostring(settings.agent), settings.backend))
  local records, ndone, t0 = {}, 0, sched.now()
  if opts.board then
    board = require("runbox.board").new{total = #tasks, out = opts.board_out}
    board:start(1)
  end
  local board_guard <close> = setmetatable({}, {__close = function()
    if board then local b = board; board = nil; b:stop() end
  end})
  local ctx = {settings = settings, modal = cfg.modal, journal = journal, say = say, dir = dir, id = id, board = board,
               sem = sched.semaphore(settings.max_parallel),
               bucket = sched.token_bucket(settings.create_rate, math.max(1, math.floor(settings.create_rate)))}
  function ctx.finished(tk, rec)
    records[#records + 1] = record_of(tk.name, rec)
    ndone = ndone + 1
    if board then board.running[tk.name] = nil; board.done = board.done + 1
      if not FINAL[rec.status] or rec.status ~= "completed" then board.failed = board.failed + 1 end end
    say(("[%d/%d] %s: %s%s (%.1fs)"):format(ndone, #tasks, tk.name, rec.status,
                                           rec.score and (" score " .. math.floor(rec.score * 100 + 0.5) .. "%") or "",
                                           rec.duration or 0))
  end
  local ok, err = pcall(sched.scope, function(s)
    for _, tk in ipairs(tasks) do
      local r = done[tk.name]
      if r then
        records[#records + 1] = record_of(tk.name, r)
        ndone = ndone + 1
        if board then board.done = board.done + 1 end
        say(("[%d/%d] %s: %s (from the journal)"):format(ndone, #tasks, tk.name, r.status))
      else
        s:spawn(run_task, tk, ctx)
      end
    end
  end)
  if not ok then
    if errors.is(err, "cancelled") then
      write_summaries(dir, records, t0)
      local finished = 0
      for _, r in ipairs(records) do if FINAL[r.status] then finished = finished + 1 end end
      say(("interrupted: %d of %d task(s) finished; finish the batch with --resume %s"):format(finished, #tasks, dir))
    end
    error(err, 0)
  end
  local recs, outputs = write_summaries(dir, records, t0)
  local infra = 0
  for _, r in ipairs(records) do if not FINAL[r.status] then infra = infra + 1 end end
  if infra > 0 then say(("%d task(s) ended with an infrastructure error: --resume %s tries them again"):format(infra, dir)) end
  return {dir = dir, id = id, records = recs, outputs = outputs, infra_errors = infra}
end

return M
