-- `runbox run` end to end through the real binary and real bubblewrap sandboxes: the oracle, the
-- none agent, time and token limits, the real Codex CLI against a stand-in model endpoint, bad tasks.
local T = require "runbox.testing"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
local BIN = T.runbox_bin()
local EXAMPLES = SRC .. "/examples/tasks"
local APPLY = dofile(SRC .. "/tests/helpers/reference_patch.lua")(EXAMPLES .. "/fix-median-bug")
local EXPECTED = assert(json.decode_file(EXAMPLES .. "/EXPECTED.json"))
local CODEX = os.getenv("RUNBOX_TEST_CODEX")
    or "/opt/runbox-test/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
local standin = dofile(SRC .. "/tests/helpers/responses_standin.lua")

T.timeout = 120

-- Runs `runbox run ...` in dir; returns the process result and the run folder's results.json.
local function run(dir, args, env)
  local cmd = {BIN, "run"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.cwd, cmd.env, cmd.timeout = dir, env, 120
  local r = assert(proc.run(cmd))
  local run_dir = r.stdout:match("Run artifacts in: ([^\n]+)")
  local results = run_dir and json.decode_file(run_dir .. "/results.json")
  return r, results, run_dir
end

local function task_names()
  local names = {}
  for name in pairs(EXPECTED.tasks) do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function expected(name, agent)
  local v = EXPECTED.tasks[name][agent]
  return type(v) == "table" and v.total_score or v
end

T.test("oracle: 100% with every result file in place", T.with_temp_dir(function(dir)
  local r, res, run_dir = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "oracle"})
  T.eq(r.code, 0, r.stderr)
  T.eq(res.status, "completed")
  T.eq(res.score, 1.0)
  T.match(r.stdout, "%[results%] Rubric total score: 100%%")
  T.match(r.stdout, "Run artifacts in: ")
  for _, f in ipairs{"metadata.json", "results.json", "evaluation_results.json", "scoring_results.md",
                     "logs/setup.log", "logs/agent.log", "logs/eval.log", "artifacts/diff.patch",
                     "artifacts/git_status.txt", "artifacts/test_output.txt"} do
    T.ok(fs.exists(run_dir .. "/" .. f), f)
  end
  T.match(assert(fs.read(run_dir .. "/scoring_results.md")), "Overall Score: %*%*100%%%*%*")
  T.match(run_dir, "^" .. dir:gsub("%p", "%%%0") .. "/data/runs/")
end))

T.test("the agent sees no reference solution, notes or tests at /app (created and prepared tasks)",
  T.with_temp_dir(function(dir)
    local prepared = assert(proc.run{BIN, "prepare", EXAMPLES .. "/fix-median-bug", "--out", dir .. "/prepared"})
    T.eq(prepared.code, 0, prepared.stderr)
    local look = "cmd:ls -A /app > /app/artifacts/app_listing.txt; cp /app/tb_meta.json /app/artifacts/meta_seen.json;"
                 .. " cp /app/repo_info.json /app/artifacts/info_seen.json; git log --all --format=%H > /app/artifacts/log_all.txt;"
                 .. " git reflog > /app/artifacts/reflog.txt;"
                 .. " grep -rl 'def test_' /app --include='*.json' --include='*.md' > /app/artifacts/tests_seen.txt; true"
    for _, task_dir in ipairs{EXAMPLES .. "/fix-median-bug", dir .. "/prepared/fix-median-bug"} do
      local r, res, run_dir = run(dir, {task_dir, "--agent", look})
      T.eq(r.code, 0, r.stderr)
      T.eq(res.status, "completed", res.error)
      local listing = assert(fs.read(run_dir .. "/artifacts/app_listing.txt"))
      T.match(listing, "LM_INSTRUCTIONS%.md", task_dir)
      T.ok(not listing:find("diff.patch", 1, true), task_dir .. ": the reference solution is not at /app")
      T.ok(not listing:find("notes.md", 1, true), task_dir .. ": nor the notes")
      local meta = assert(json.decode_file(run_dir .. "/artifacts/meta_seen.json"))
      T.ok(meta.task_id and meta.lm, "tb_meta.json is there")
      T.eq(meta.evaluation, nil, task_dir .. ": tb_meta.json without the evaluation")
      T.eq(fs.read(run_dir .. "/artifacts/tests_seen.txt"), "", "no test script's text anywhere at /app")
      local info = assert(json.decode_file(run_dir .. "/artifacts/info_seen.json"))
      T.ok(info.start_commit, "repo_info.json is there")
      T.eq({info.end_commit, info.touched_files}, {nil, nil}, "without the end commit and its files")
      -- the clone's history ends at the start commit: no later commit reachable, no reflog of one
      local start = assert(json.decode_file(task_dir .. "/repo_info.json")
                           or json.decode_file(task_dir .. "/overlay_files/repo_info.json")).start_commit
      T.eq(fs.read(run_dir .. "/artifacts/log_all.txt"), start .. "\n", "git log --all shows the start commit only")
      T.eq(fs.read(run_dir .. "/artifacts/reflog.txt"), "", "an empty reflog")
      -- the tests still ran afterwards, and the oracle still applies the solution
      T.eq(res.tests.passed + res.tests.failed, 2)
      local o, ores = run(dir, {task_dir, "--agent", "oracle"})
      T.eq({o.code, ores.score}, {0, 1.0}, o.stderr)
    end
  end))

T.test("oracle scores 100% and none scores exactly the expected baseline on every example", T.with_temp_dir(function(dir)
  for _, name in ipairs(task_names()) do
    for _, agent in ipairs{"oracle", "none"} do
      local r, res = run(dir, {EXAMPLES .. "/" .. name, "--agent", agent})
      T.eq(r.code, 0, name .. " " .. agent .. ": " .. r.stderr)
      T.eq(res.status, "completed", name .. " " .. agent)
      T.eq(res.score, expected(name, agent), name .. " " .. agent)
    end
  end
end), {timeout = 300})

T.test("an agent past its time limit is stopped: status timeout, still scored", T.with_temp_dir(function(dir)
  local t0 = os.time()
  local r, res = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "cmd:sleep 60", "--timeout", "1"})
  T.eq(r.code, 0, r.stderr)
  T.eq(res.status, "timeout")
  T.eq(res.agent.how, "timeout")
  T.ok(os.time() - t0 < 30, "stopped promptly")
  T.eq(res.score, expected("fix-median-bug", "none"))
end))

T.test("a failing agent is a result (status failed), not an infrastructure error", T.with_temp_dir(function(dir)
  local r, res = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "cmd:exit 3"})
  T.eq(r.code, 0, r.stderr)
  T.eq(res.status, "failed")
  T.eq(res.agent.exit_code, 3)
end))

local function codex_available() return fs.exists(CODEX) end

T.test("the real codex CLI, through the metering proxy, makes an edit that lands in the diff and is scored",
  T.with_temp_dir(function(dir)
    if not codex_available() then error("codex not installed at " .. CODEX .. " (tests/deps.sh installs it)") end
    local up <close> = standin.start{steps = {{shell = APPLY}, {message = "applied the fix"}},
                                     usage = {input = 120, output = 30}}
    local secret = "sk-test-secret-" .. ("x"):rep(20)
    local r, res, run_dir = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex", "--model", "gpt-5.5",
                                      "--codex-bin", CODEX, "--timeout", "60",
                                      "--price-input", "2", "--price-output", "10"},
                                {OPENAI_BASE_URL = up.base_url, OPENAI_API_KEY = secret})
    T.eq(r.code, 0, r.stderr)
    T.eq(res.status, "completed", res.error)
    T.eq(res.score, 1.0)
    T.ok(#up.requests >= 2, "codex asked the model at least twice")
    T.eq(up.requests[1].auth, "Bearer " .. secret, "the proxy sent the real key upstream")
    T.eq(res.tokens.input, 120 * #up.requests)
    T.eq(res.tokens.source, "proxy")
    local n = #up.requests
    T.eq(res.tokens.cost_usd, (120 * n * 2 + 30 * n * 10) / 1e6, "cost from the given prices")
    local traces = assert(fs.read(run_dir .. "/artifacts/traces.jsonl"))
    T.eq(select(2, traces:gsub("\n", "")), #up.requests)
    local all = proc.run{"grep", "-rl", secret, run_dir}
    T.eq(all.stdout, "", "the key appears in no file of the run")
    T.ok(not (r.stdout .. r.stderr):find(secret, 1, true), "nor on the console")
  end))

T.test("a token limit passed mid-run stops codex before it finishes: status token_limit",
  T.with_temp_dir(function(dir)
    if not codex_available() then error("codex not installed at " .. CODEX) end
    local up <close> = standin.start{steps = {{shell = "echo step one"}, {shell = "echo step two"},
                                              {shell = APPLY}, {message = "done"}},
                                     usage = {input = 600, output = 10}}
    local r, res = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex", "--model", "gpt-5.5",
                             "--codex-bin", CODEX, "--token-limit", "1000", "--timeout", "60"},
                       {OPENAI_BASE_URL = up.base_url, OPENAI_API_KEY = "sk-limit-test-000000"})
    T.eq(r.code, 0, r.stderr)
    T.eq(res.status, "token_limit")
    T.ok(res.tokens.counted > 1000)
    local max_step = 0
    for _, q in ipairs(up.requests) do max_step = math.max(max_step, q.step) end
    T.ok(max_step < 3, "the agent never got to apply the fix")
    T.eq(res.score, expected("fix-median-bug", "none"))
  end))

-- A prepared copy of an example with its own box_bootstrap.sh.
local function with_bootstrap(dir, script)
  local r = assert(proc.run{BIN, "prepare", EXAMPLES .. "/fix-median-bug", "--out", dir .. "/prepared"})
  assert(r.code == 0, r.stderr)
  local prepared = r.stdout:match("[^\n]+")
  assert(fs.write(prepared .. "/overlay_files/box_bootstrap.sh", script))
  return prepared
end

T.test("--bootstrap runs the task's box_bootstrap.sh and ends it once completion.json says so",
  T.with_temp_dir(function(dir)
    local prepared = with_bootstrap(dir, table.concat({
      "#!/bin/bash", "set -euo pipefail", "echo \"task $TASK_ID\"", "git apply /app/diff.patch",
      "mkdir -p /app/artifacts", "echo '{\"completed\": true}' > /app/artifacts/completion.json",
      "sleep 120"}, "\n") .. "\n")
    local t0 = os.time()
    local r, res, run_dir = run(dir, {prepared, "--bootstrap", "--timeout", "60"})
    T.eq(r.code, 0, r.stderr)
    T.eq(res.status, "completed", res.error)
    T.eq(res.agent.name, "bootstrap")
    T.eq(res.score, 1.0)
    T.ok(os.time() - t0 < 40, "did not wait for the sleep 120")
    T.ok(fs.exists(run_dir .. "/artifacts/completion.json"))
    T.match(assert(fs.read(run_dir .. "/logs/agent.log")), "task fix%-median%-bug")
  end))

T.test("--bootstrap without completion is stopped at the time limit; without a script it is an error",
  T.with_temp_dir(function(dir)
    local prepared = with_bootstrap(dir, "#!/bin/bash\nsleep 120\n")
    local r, res = run(dir, {prepared, "--bootstrap", "--timeout", "2"})
    T.eq(r.code, 0, r.stderr)
    T.eq(res.status, "timeout")
    local r2, res2 = run(dir, {EXAMPLES .. "/fix-median-bug", "--bootstrap"})
    T.ok(r2.code ~= 0)
    T.match(res2.error, "box_bootstrap%.sh not found")
  end))

T.test("bad tasks: a missing folder, a broken tb_meta.json, an unreachable repository", T.with_temp_dir(function(dir)
  local r = run(dir, {dir .. "/no-such-task", "--agent", "oracle"})
  T.ok(r.code ~= 0)
  T.match(r.stdout .. r.stderr, "no%-such%-task")
  -- broken JSON
  assert(proc.run{"cp", "-r", EXAMPLES .. "/fix-median-bug", dir .. "/broken"})
  assert(fs.write(dir .. "/broken/tb_meta.json", "{ not json"))
  local r2, res2 = run(dir, {dir .. "/broken", "--agent", "oracle"})
  T.ok(r2.code ~= 0)
  T.eq(res2.status, "failed")
  T.match(res2.error, "tb_meta%.json")
  -- a repository that is not there
  assert(proc.run{"cp", "-r", EXAMPLES .. "/fix-median-bug", dir .. "/norepo"})
  local meta = assert(json.decode_file(dir .. "/norepo/tb_meta.json"))
  meta.repo.git_url = dir .. "/nowhere.bundle"
  assert(json.encode_file(dir .. "/norepo/tb_meta.json", meta))
  local r3, res3 = run(dir, {dir .. "/norepo", "--agent", "oracle"})
  T.ok(r3.code ~= 0)
  T.eq(res3.status, "failed")
  T.match(res3.error, "git_url")
  -- bad flags
  local r4 = run(dir, {EXAMPLES .. "/fix-median-bug", "--agent", "wizard"})
  T.ok(r4.code ~= 0)
  T.match(r4.stderr, "unknown agent 'wizard'")
  local r5 = run(dir, {EXAMPLES .. "/fix-median-bug", "--timeout", "soon"})
  T.eq(r5.code, 2)
  T.match(r5.stderr, "%-%-timeout")
end))

T.run()
