-- A batch: many task runs at once with a bound on parallelism, a sandbox-creation rate limit,
-- retries with backoff for infrastructure errors only, an append-only journal (fsync per record)
-- that lets `--resume` finish a batch after a crash, and summaries in markdown, CSV and JSON.
--
-- Config (YAML, the original schema, or a Lua file returning the same table):
--   agents:   {model, timeout_sec, token_limit, max_parallel (5), agent (oracle), backend (local),
--              retries (2), create_rate (5 per second), test_timeout (300)}
--   datasets: {NAME: {enabled (true), path, tasks ([] = every folder with a tb_meta.json, sorted)}}
--   output:   {results_dir, save_artifacts (true)}
-- Relative paths are relative to the folder runbox runs in, as with the original runner (but no
-- `cd scripts` is needed: runbox runs from anywhere).
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
local log = require "runbox.log"

local M = {}

local function bad(file, field, message)
  return nil, errors.new("config", ("%s: %s: %s"):format(file, field, message), {path = file, field = field})
end

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
  if type(raw) ~= "table" then return bad(path, "(top)", "expected a mapping with agents, datasets and output") end
  local base = assert(fs.realpath("."))
  local cfg = {file = path, base = base}
  local a = raw.agents
  if type(a) ~= "table" then return bad(path, "agents", "missing section (agents: {model, timeout_sec, ...})") end
  local function num(key, default, integer)
    local v = a[key]
    if v == nil then return default end
    if type(v) ~= "number" or v < 0 or (integer and math.type(v) ~= "integer") then
      return nil, ("expected a non-negative %s, got %s"):format(integer and "integer" or "number", tostring(v))
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
  cfg.agents = agents
  if type(raw.datasets) ~= "table" or next(raw.datasets) == nil then
    return bad(path, "datasets", "missing section (datasets: {NAME: {path: folder of tasks}})")
  end
  cfg.datasets = {}
  for name, d in pairs(raw.datasets) do
    local field = "datasets." .. tostring(name)
    if type(d) ~= "table" then return bad(path, field, "expected a mapping with path") end
    if type(d.path) ~= "string" then return bad(path, field .. ".path", "missing (the folder holding the tasks)") end
    if d.tasks ~= nil and type(d.tasks) ~= "table" then return bad(path, field .. ".tasks", "expected a list of task folder names") end
    if d.enabled ~= nil and type(d.enabled) ~= "boolean" then return bad(path, field .. ".enabled", "expected true or false") end
    cfg.datasets[name] = {name = name, enabled = d.enabled ~= false, path = absolute(base, d.path), tasks = d.tasks or {}}
  end
  local o = raw.output
  if type(o) ~= "table" then return bad(path, "output", "missing section (output: {results_dir: folder})") end
  if type(o.results_dir) ~= "string" then return bad(path, "output.results_dir", "missing (where batch folders go)") end
  cfg.output = {results_dir = absolute(base, o.results_dir), save_artifacts = o.save_artifacts ~= false}
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
        local dirs, err = task.discover(d.path)
        if not dirs then problems[#problems + 1] = errors.message(err)
        else for _, dir in ipairs(dirs) do out[#out + 1] = {name = dir:match("[^/]+$"), dir = dir, dataset = name} end end
      end
    end
  end
  return out, problems
end

-- The journal: one JSON object per line, fsynced, never rewritten.
local function journal_append(path, rec)
  rec.ts = util.iso8601()
  assert(fs.append(path, json.encode(rec) .. "\n", {fsync = true}))
end

-- Reads a journal; returns {task_name = last finish record} for runs that ended with a result.
local function finished_tasks(path)
  local done = {}
  local text = fs.read(path) or ""
  for line in text:gmatch("[^\n]+") do
    local rec = json.decode(line)   -- a torn last line (crash mid-write) decodes to nil: ignored
    if type(rec) == "table" and rec.event == "finish" and rec.final then done[rec.task] = rec end
  end
  return done
end

local RETRY = {sandbox_error = true}
local FINAL = {completed = true, failed = true, timeout = true, token_limit = true}

-- Runs a batch. opts: config (loaded), dataset, max_parallel, agent, model, timeout, backend,
-- retries, resume (batch dir), format, output, on_line(text) (progress), judge.
-- Returns {dir, records, summary_text, infra_errors}.
function M.run(opts)
  local cfg = opts.config
  local a = cfg.agents
  local settings = {agent = opts.agent or a.agent, model = opts.model or a.model, timeout = opts.timeout or a.timeout_sec,
                    token_limit = a.token_limit, backend = opts.backend or a.backend,
                    max_parallel = opts.max_parallel or a.max_parallel, retries = opts.retries or a.retries,
                    create_rate = a.create_rate, test_timeout = a.test_timeout, judge = opts.judge}
  local say = opts.on_line or function(text) io.stdout:write(text, "\n"); io.stdout:flush() end
  local dir, id, done = opts.resume, nil, {}
  if dir then
    local meta = json.decode_file(dir .. "/batch.json")
    if not meta then return nil, errors.new("usage", ("--resume %s: no batch.json there"):format(dir)) end
    id = meta.id
    done = finished_tasks(dir .. "/journal.jsonl")
    -- sandboxes the crashed batch left behind go first
    local backend = sandbox.get(settings.backend)
    for _, sb in ipairs(backend.list{tags = {batch = id}} or {}) do
      backend.terminate_id(sb.id)
      say(("resume: terminated sandbox %s left by the previous run"):format(sb.id))
    end
  else
    assert(fs.mkdir_p(cfg.output.results_dir))
    id, dir = util.run_id(cfg.output.results_dir)
    dir = assert(fs.realpath(dir))
  end
  local tasks, problems = M.discover(cfg, opts.dataset)
  if not tasks then return nil, problems end
  if #tasks == 0 then
    return nil, errors.new("config", ("%s: no tasks found (datasets need folders with tb_meta.json)"):format(cfg.file))
  end
  if not opts.resume then
    assert(json.encode_file(dir .. "/batch.json", {id = id, config = cfg.file, created = util.iso8601(),
                                                   settings = settings, tasks = (function()
                                                     local l = {} for i, t in ipairs(tasks) do l[i] = t.name end return l end)()},
                            {pretty = true}))
  end
  local journal = dir .. "/journal.jsonl"
  for _, p in ipairs(problems or {}) do say("warning: " .. p) end
  say(("batch %s: %d task(s), %d at a time, agent %s, backend %s"):format(id, #tasks, settings.max_parallel,
                                                                           tostring(settings.agent), settings.backend))
  local sem = sched.semaphore(settings.max_parallel)
  local bucket = sched.token_bucket(settings.create_rate, math.max(1, math.floor(settings.create_rate)))
  local records, counts, t0 = {}, {done = 0, running = 0, failed = 0}, sched.now()
  local function progress(rec, text)
    say(("[%d/%d] %s"):format(counts.done, #tasks, text))
  end
  sched.scope(function(s)
    for _, tk in ipairs(tasks) do
      if done[tk.name] then
        local r = done[tk.name]
        records[#records + 1] = {task = tk.name, run_id = r.run_id, run_dir = r.run_dir, status = r.status,
                                 duration = r.duration, error = r.error, evaluation = r.evaluation, results = r.test_results}
        counts.done = counts.done + 1
        progress(nil, ("%s: %s (from the journal)"):format(tk.name, r.status))
      else
        s:spawn(function()
          sem:with(function()
            local attempt = 0
            while true do
              attempt = attempt + 1
              bucket:take()
              counts.running = counts.running + 1
              journal_append(journal, {event = "start", task = tk.name, attempt = attempt})
              local started = sched.now()
              local res, details = runner.run{task_dir = tk.dir, backend = settings.backend, agent = settings.agent,
                                              model = settings.model, timeout = settings.timeout,
                                              token_limit = settings.token_limit, runs_dir = dir .. "/runs",
                                              test_timeout = settings.test_timeout, judge = settings.judge,
                                              tags = {batch = id}, quiet = true}
              counts.running = counts.running - 1
              local duration = sched.now() - started
              local final = FINAL[res.status] ~= nil or attempt > settings.retries or not RETRY[res.status]
              if res.status == "cancelled" then final = false end
              journal_append(journal, {event = "finish", task = tk.name, attempt = attempt, final = final,
                                       status = res.status, run_id = res.run_id, run_dir = details and details.dir,
                                       duration = duration, error = res.error, score = res.score,
                                       evaluation = details and details.evaluation,
                                       test_results = details and details.test_results})
              if final or res.status == "cancelled" then
                records[#records + 1] = {task = tk.name, run_id = res.run_id, run_dir = details and details.dir,
                                         status = res.status, duration = duration, error = res.error,
                                         evaluation = details and details.evaluation,
                                         results = details and details.test_results}
                counts.done = counts.done + 1
                progress(nil, ("%s: %s%s (%.1fs)"):format(tk.name, res.status,
                                                        res.score and (" score " .. math.floor(res.score * 100 + 0.5) .. "%") or "",
                                                        duration))
                return
              end
              local wait = math.min(60, 2 ^ attempt)
              say(("%s: %s (%s); retry %d/%d in %ds"):format(tk.name, res.status, tostring(res.error),
                                                           attempt, settings.retries, wait))
              sched.sleep(wait)
            end
          end)
        end)
      end
    end
  end)
  local recs = {}
  for i, r in ipairs(records) do recs[i] = report.record(r) end
  local info = {run_time = util.iso8601(), wall_time = sched.now() - t0}
  local outputs = {markdown = report.summary_markdown(recs, info), csv = report.summary_csv(recs),
                   json = report.summary_json(recs)}
  assert(fs.write_atomic(dir .. "/summary.md", outputs.markdown))
  assert(fs.write_atomic(dir .. "/summary.csv", outputs.csv))
  assert(fs.write_atomic(dir .. "/summary.json", outputs.json))
  local infra = 0
  for _, r in ipairs(records) do if not FINAL[r.status] then infra = infra + 1 end end
  return {dir = dir, id = id, records = recs, outputs = outputs, infra_errors = infra}
end

return M
