-- `runbox run --backend modal` and `runbox parallel --backend modal` end to end: the real runbox
-- binary against the stand-in Modal server (real gRPC over HTTP/2, bwrap sandboxes): the oracle,
-- the real codex CLI with its installation on a volume and its key in a Modal secret, artifacts on
-- the artifacts volume under the run id, injected faults survived, a sandbox that dies, --resume
-- after SIGKILL terminating what the killed batch left, and the messages for what is missing.
local T = require "runbox.testing"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"
local sched = require "runbox.sched"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
local BIN = T.runbox_bin()
local EXAMPLES = SRC .. "/examples/tasks"
local APPLY = dofile(SRC .. "/tests/helpers/reference_patch.lua")(EXAMPLES .. "/fix-median-bug")
local APPLY_ANY = dofile(SRC .. "/tests/helpers/reference_patch.lua")(EXAMPLES)
local EXPECTED = assert(json.decode_file(EXAMPLES .. "/EXPECTED.json")).tasks
local CODEX = os.getenv("RUNBOX_TEST_CODEX")
    or "/opt/runbox-test/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
local modal_standin = dofile(SRC .. "/tests/helpers/modal_standin/start.lua")
local responses = dofile(SRC .. "/tests/helpers/responses_standin.lua")

T.timeout = 180

local NAMES = {}
for name in pairs(EXPECTED) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)

-- A light image: the stand-in logs RUN lines without running them (the default image installs
-- packages from the network).
local function server() return modal_standin.start{build_run = "skip"} end

local function env_of(s, dir, extra)
  local e = s.env()
  e.HOME = dir                                     -- no ~/.modal.toml of the machine's user
  e.MODAL_CONFIG_PATH = dir .. "/no-modal.toml"
  e.OPENAI_API_KEY = false
  e.OPENAI_BASE_URL = false
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function run(s, dir, args, extra_env)
  local cmd = {BIN, "run", "--backend", "modal"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.cwd, cmd.env, cmd.timeout = dir, env_of(s, dir, extra_env), 150
  local r = assert(proc.run(cmd))
  local run_dir = r.stdout:match("Run artifacts in: ([^\n]+)")
  return r, run_dir and json.decode_file(run_dir .. "/results.json"), run_dir
end

local function alive(s)
  local out = {}
  for _, sb in ipairs(s.state().sandboxes) do
    if sb.alive then out[#out + 1] = sb.id end
  end
  return out
end

-- The live sandboxes whose agent (an exec running `sleep`) has started: their runs are past
-- setup, so a cancellation finds a sandbox to leave its result copy in.
local function agents_running(s)
  local n = 0
  for _, sb in ipairs(s.state().sandboxes) do
    for _, ex in ipairs(sb.alive and sb.execs or {}) do
      if ex.running and table.concat(ex.command_args, " "):find("sleep 30", 1, true) then n = n + 1 break end
    end
  end
  return n
end

local function volume_dir(s, name)
  local v = s.state().volumes[name]
  return v and v.dir
end

T.test("run --backend modal with the oracle: 100%, result files here, artifacts on the volume under the run id",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    local r, res, run_dir = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "oracle", "--run-id", "m1"})
    T.eq(r.code, 0, r.stdout .. r.stderr)
    T.eq(res.status, "completed", res.error)
    T.eq(res.score, 1.0)
    T.eq(res.backend, "modal")
    for _, f in ipairs{"metadata.json", "evaluation_results.json", "scoring_results.md", "artifacts/diff.patch",
                       "artifacts/git_status.txt", "logs/agent.log", "logs/eval.log"} do
      T.ok(fs.exists(run_dir .. "/" .. f), f .. " in the run folder")
    end
    T.match(assert(fs.read(run_dir .. "/artifacts/diff.patch")), "median")
    local vol = volume_dir(s, "codex-artifacts")
    T.ok(vol, "volume codex-artifacts made")
    T.match(assert(fs.read(vol .. "/m1/diff.patch")), "median")
    local root = fs.list(vol)
    table.sort(root)
    T.eq(root, {"m1"}, "nothing at the volume's root but the run's folder")
    T.eq(alive(s), {}, "no sandbox left running")
    local sb = s.state().sandboxes[1]
    T.eq(sb.tags.run, "m1")
  end))

T.test("the real codex CLI in a Modal sandbox: installation from its volume, key from the secret, edit scored",
  T.with_temp_dir(function(dir)
    if not fs.exists(CODEX) then error("codex not installed at " .. CODEX .. " (tests/deps.sh installs it)") end
    local s <close> = server()
    local up <close> = responses.start{steps = {{shell = APPLY}, {message = "applied the fix"}},
                                       usage = {input = 120, output = 30}}
    local key = "sk-modal-secret-" .. ("y"):rep(20)
    s.secret("openai-api-keys", {OPENAI_API_KEY = key})
    -- the installation as `runbox setup` leaves it (setup itself is tested in test_setup_fetch.lua):
    -- the binary linked into the volume's folder, and the manifest
    local modal = require "runbox.modal"
    local c = assert(modal.client{env = s.env()})
    assert(c:volume("codex-installation", {create = true}))
    local vdir = assert(volume_dir(s, "codex-installation"))
    assert(fs.mkdir_p(vdir .. "/bin"))
    local ln = assert(proc.run{"ln", CODEX, vdir .. "/bin/codex"})
    if ln.code ~= 0 then assert(fs.copy_file(CODEX, vdir .. "/bin/codex")) end
    assert(fs.write(vdir .. "/runbox-codex.json", json.encode{bin = "bin/codex", version = "0.169.0"}))
    local r, res, run_dir = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex", "--model", "gpt-5.5",
                                         "--timeout", "90"}, {OPENAI_BASE_URL = up.base_url})
    T.eq(r.code, 0, r.stdout .. r.stderr)
    T.eq(res.status, "completed", res.error)
    T.eq(res.score, 1.0)
    T.ok(#up.requests >= 2, "codex asked the model")
    T.eq(up.requests[1].auth, "Bearer " .. key, "the key from the Modal secret reached the endpoint")
    T.eq(res.tokens and res.tokens.source, "codex log", "no proxy in between: codex's own report; the log ends: "
         .. (fs.read(run_dir .. "/logs/agent.log") or ""):sub(-300))
    T.eq(proc.run{"grep", "-rl", key, run_dir}.stdout, "", "the key is in no file of the run")
    T.ok(not (r.stdout .. r.stderr):find(key, 1, true), "nor on the console")
    for _, sb in ipairs(s.state().sandboxes) do
      T.ok(not json.encode(sb):find(key, 1, true), "nor in what the server recorded")
    end
    -- past --token-limit: no proxy can stop it on the way, so codex's report marks the run after
    r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex", "--model", "gpt-5.5",
                          "--timeout", "90", "--token-limit", "100"}, {OPENAI_BASE_URL = up.base_url})
    T.eq(res.status, "token_limit", res.error)
    T.ok(res.tokens.counted > 100, "counted " .. tostring(res.tokens.counted))
    T.eq(alive(s), {})
  end))

T.test("a sandbox that cannot be terminated is retried, then named in the console and results.json",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    s.admin{method = "SandboxTerminate", kind = "unavailable", count = 100}
    local r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "oracle"})
    T.eq(res.status, "completed", res.error)
    T.ok(res.sandbox_left and res.sandbox_left:match("^sb%-"), "sandbox_left: " .. tostring(res.sandbox_left))
    T.match(r.stderr .. r.stdout, "could not be terminated.*modal sandbox terminate " .. res.sandbox_left:gsub("%p", "%%%0"))
    s.admin(nil)
  end))

T.test("what is missing is said, with what to run: credentials, the secret, the codex volume",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    local r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "oracle"},
                       {MODAL_TOKEN_ID = false, MODAL_TOKEN_SECRET = false})
    T.ok(r.code ~= 0, "no credentials is an infrastructure error")
    T.match(res.error, "modal token new")
    r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex"})
    T.eq(res.status, "sandbox_error")
    T.match(res.error, "runbox setup")
    T.match(res.error, "openai%-api%-keys")
    -- a command agent may not need a key: it runs without one
    r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "cmd:test -z \"$OPENAI_API_KEY\""})
    T.eq(res.status, "completed", res.error)
    s.secret("openai-api-keys", {OPENAI_API_KEY = "sk-" .. ("z"):rep(30)})
    r, res = run(s, dir, {EXAMPLES .. "/fix-median-bug", "--agent", "codex"})
    T.eq(res.status, "sandbox_error")
    T.match(res.error, "codex%-installation")
    T.match(res.error, "runbox setup")
    T.eq(alive(s), {})
  end))

-- Writes DIR/batch.yaml for the example tasks on the modal backend.
local function write_config(dir, agent, extra)
  local lines = {"agents:", "  agent: \"" .. agent .. "\"", "  max_parallel: 5", "  backend: modal",
                 "datasets:", "  ex:", "    path: " .. EXAMPLES, "output:", "  results_dir: " .. dir .. "/results",
                 "modal:", "  image: python:3.11-slim", "  cpu: 1", "  memory: 1024"}
  for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
  local path = dir .. "/batch.yaml"
  assert(fs.write(path, table.concat(lines, "\n") .. "\n"))
  return path
end

local function parallel(s, dir, args, opts)
  local cmd = {BIN, "parallel"}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.cwd, cmd.env, cmd.timeout = dir, env_of(s, dir), 170
  if opts and opts.spawn then return assert(proc.spawn(cmd)) end
  return assert(proc.run(cmd))
end

local function batch_dir(dir)
  local names = fs.list(dir .. "/results") or {}
  T.eq(#names, 1, "batch folders")
  return dir .. "/results/" .. names[1]
end

T.test("parallel --backend modal: every example at 100% through injected faults, nothing left running",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    s.admin{method = "SandboxCreate", kind = "unavailable", count = 2}
    s.admin{method = "TaskExecStdioRead", kind = "cut_stream", after = 1, count = 4}
    s.admin{method = "TaskExecWait", kind = "unavailable", count = 3}
    local r = parallel(s, dir, {write_config(dir, "oracle"), "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    local list = assert(json.decode(r.stdout), r.stdout)
    T.eq(#list, #NAMES)
    for _, row in ipairs(list) do
      T.eq(row.status, "completed", row.task)
      T.eq(row.score, 1.0, row.task)
    end
    T.eq(alive(s), {})
    for _, sb in ipairs(s.state().sandboxes) do
      T.eq(sb.resources and sb.resources.milli_cpu, 1000, "cpu from the config's modal section")
      T.ok(sb.tags.batch and sb.tags.run, "tagged with batch and run")
    end
  end))

T.test("a task whose image does not build fails with the build log shown; the batch goes on",
  T.with_temp_dir(function(dir)
    local s <close> = modal_standin.start{build_run = "exec"}
    local tasks = dir .. "/tasks"
    assert(fs.mkdir_p(tasks))
    assert(fs.symlink(SRC .. "/examples/repos", dir .. "/repos"))   -- the tasks name their bundles relatively
    for _, name in ipairs{"add-slugify", "fix-median-bug"} do
      T.eq(assert(proc.run{"cp", "-r", EXAMPLES .. "/" .. name, tasks .. "/" .. name}).code, 0)
    end
    local meta_file = tasks .. "/fix-median-bug/tb_meta.json"
    local meta = assert(json.decode_file(meta_file))
    meta.sandbox = {image = {registry = "python:3.11-slim", commands = {"RUN echo about to fail && exit 3"}}}
    assert(json.encode_file(meta_file, meta))
    local lines = {"agents:", "  agent: oracle", "  backend: modal", "  retries: 0", "datasets:", "  ex:",
                   "    path: " .. tasks, "output:", "  results_dir: " .. dir .. "/results",
                   "modal:", "  image: python:3.11-slim"}
    assert(fs.write(dir .. "/b.yaml", table.concat(lines, "\n") .. "\n"))
    local r = parallel(s, dir, {dir .. "/b.yaml", "--format", "json"})
    local list = assert(json.decode(r.stdout), r.stdout .. r.stderr)
    local by = {}
    for _, row in ipairs(list) do by[row.task] = row end
    T.eq(by["add-slugify"].status, "completed", by["add-slugify"].error)
    T.eq(by["fix-median-bug"].status, "failed")
    T.match(by["fix-median-bug"].error, "image")
    local runs = batch_dir(dir) .. "/runs"
    local found
    for _, id in ipairs(fs.list(runs)) do
      local log_text = fs.read(runs .. "/" .. id .. "/logs/setup.log") or ""
      if log_text:find("about to fail", 1, true) then found = true end
    end
    T.ok(found, "the build's output is in the failed run's setup.log")
    T.eq(alive(s), {})
  end))

T.test("a sandbox that dies mid-run is a sandbox error, retried, then completed",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    s.admin{kind = "sandbox_dies", after = 2}
    local cfg = write_config(dir, "cmd:sleep 4 && " .. APPLY_ANY, {})
    local r = parallel(s, dir, {cfg, "--dataset", "ex", "--format", "json", "--retries", "1", "--max-parallel", "1"})
    T.eq(r.code, 0, r.stderr)
    local bdir = batch_dir(dir)
    local statuses = {}
    for line in assert(fs.read(bdir .. "/journal.jsonl")):gmatch("[^\n]+") do
      local rec = json.decode(line)
      if rec.event == "finish" then statuses[#statuses + 1] = rec.status end
    end
    T.eq(statuses[1], "sandbox_error", "the first run lost its sandbox")
    T.eq(#statuses, #NAMES + 1, "one retry")
    T.eq(alive(s), {})
  end))

T.test("SIGKILL mid-batch, then --resume: the killed batch's sandboxes are terminated, every task done once",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    local cfg = write_config(dir, "cmd:sleep 3 && " .. APPLY_ANY, {})
    local p = parallel(s, dir, {cfg, "--max-parallel", "2"}, {spawn = true})
    local bdir
    local deadline = sched.now() + 90
    while sched.now() < deadline do
      local names = fs.list(dir .. "/results") or {}
      if names[1] then
        bdir = dir .. "/results/" .. names[1]
        local j = fs.read(bdir .. "/journal.jsonl") or ""
        if j:find('"event":"finish"') and #alive(s) > 0 then break end
      end
      sched.sleep(0.2)
    end
    p:kill(9)
    p:wait()
    p:close()
    T.ok(bdir, "the batch started")
    T.ok(#alive(s) > 0, "the killed batch left sandboxes running")
    local r = parallel(s, dir, {cfg, "--resume", bdir, "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    T.eq(alive(s), {}, "nothing left after the resumed batch")
    local done = {}
    for line in assert(fs.read(bdir .. "/journal.jsonl")):gmatch("[^\n]+") do
      local rec = json.decode(line)
      if rec and rec.event == "finish" and rec.status == "completed" then
        T.eq(done[rec.task], nil, rec.task .. " completed twice")
        done[rec.task] = true
      end
    end
    for _, name in ipairs(NAMES) do T.ok(done[name], name .. " completed") end
  end))

T.test("Ctrl-C mid-batch: exit 130, every Modal sandbox of the batch terminated, --resume finishes",
  T.with_temp_dir(function(dir)
    local s <close> = server()
    local cfg = write_config(dir, "cmd:sleep 30", {})
    local p = parallel(s, dir, {cfg, "--max-parallel", "3"}, {spawn = true})
    local deadline = sched.now() + 60
    while sched.now() < deadline and agents_running(s) < 3 do sched.sleep(0.2) end
    T.eq({#alive(s), agents_running(s)}, {3, 3}, "three sandboxes, each running its agent")
    -- its console output is read all along (a full pipe would stall it) and shown on failure
    local errout = sched.spawn(function() return p:read_all("stderr") end)
    sched.spawn(function() return p:read_all("stdout") end)
    local t0 = sched.now()
    p:kill(2)
    local code, how = p:wait(60)
    local took = sched.now() - t0
    p:close()
    local _, text = errout:wait()
    print(("#   Ctrl-C: the batch stopped %.1fs after the signal"):format(took))
    T.eq({code, how}, {130, "exit"}, ("stopped after %.1fs; its stderr ends: %s"):format(took, (text or ""):sub(-1500)))
    T.eq(alive(s), {}, "no sandbox left after Ctrl-C")
    -- what `runbox fetch` will show: the copies of results.json on the volume say cancelled too
    local vol = assert(volume_dir(s, "codex-artifacts"))
    local seen = 0
    for _, id in ipairs(fs.list(vol) or {}) do
      local rec = json.decode_file(vol .. "/" .. id .. "/results.json")
      if rec then seen = seen + 1; T.eq(rec.status, "cancelled", id) end
    end
    T.eq(seen, 3, "a result copy per cancelled run; the batch's stderr ends: " .. (text or ""):sub(-1500))
    -- the rest with an agent that finishes: the recorded settings, overridden by the flag
    local r = parallel(s, dir, {cfg, "--resume", batch_dir(dir), "--agent", "oracle", "--format", "json"})
    T.eq(r.code, 0, r.stderr)
    for _, row in ipairs(assert(json.decode(r.stdout))) do T.eq(row.score, 1.0, row.task) end
    T.eq(alive(s), {})
  end))

T.run()
