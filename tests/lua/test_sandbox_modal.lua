-- The modal sandbox backend against the stand-in Modal server (tests/helpers/modal_standin): the
-- sandbox interface (exec, files, terminate, list), artifacts on the volume, the creation rate
-- limit, kill, secrets, and the errors that say what to run.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local fs = require "runbox.fs"
local json = require "runbox.json"
local tar = require "runbox.tar"
local modal = require "runbox.modal"
local sandbox = require "runbox.sandbox"

local backend = assert(sandbox.get("modal"))
T.timeout = 40

local ROOT = os.getenv("RUNBOX_SOURCE") or (arg and arg[0] and arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local standin = dofile(ROOT .. "/tests/helpers/modal_standin/start.lua")

local S, HOME, C   -- the stand-in, an empty home (no ~/.modal.toml), a client for it

local function client()
  if not C then
    HOME = assert(fs.temp_dir("sandbox-modal-home"))
    S = standin.start{build_run = "skip"}
    C = assert(modal.client{env = S.env(), home = HOME, app = "sandbox-tests"})
  end
  return C
end

-- Every sandbox a test makes goes at its end.
local made = {}
local function new(opts)
  opts = opts or {}
  opts.client = opts.client or client()
  opts.timeout = opts.timeout or 120
  local sb = assert(backend.create(opts))
  made[#made + 1] = sb
  return sb
end

local function cleanup()
  for _, sb in ipairs(made) do sb:terminate() end
  made = {}
end

local function test(name, fn)
  T.test(name, function()
    local ok, err = pcall(fn)
    cleanup()
    if not ok then error(err, 0) end
  end)
end

-- Runs argv in sb to its end: {code=, how=, stdout=, stderr=}.
local function run(sb, argv, opts)
  local p <close> = assert(sb:exec(argv, opts))
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local out = assert(p:read_all("stdout"))
  local _, err = errtask:wait()
  local code, how = p:wait()
  return {code = code, how = how, stdout = out, stderr = err}
end
local function sh(sb, line, opts) return run(sb, {"sh", "-c", line}, opts) end

local function info(id)
  for _, s in ipairs(S.state().sandboxes) do if s.id == id then return s end end
end

---------------------------------------------------------------------------------------------------

test("create: default image built once (log lines live), tags, workdir, resources", function()
  local lines = {}
  local sb = new{tags = {batch = "b-create", run = "r1"}, cpu = 2, memory = 4096,
                 on_log = function(line) lines[#lines + 1] = line end}
  T.match(sb.id, "^sb%-")
  T.eq(sb.backend, "modal")
  T.eq(sb.state, "running")
  T.eq(sb.workdir, "/app")
  T.eq(sb.tags, {batch = "b-create", run = "r1"})
  local all = table.concat(lines, "\n")
  T.match(all, "apt%-get install %-y git curl build%-essential")
  T.match(all, "nodesource")
  for _, l in ipairs(lines) do T.ok(not l:find("\n"), "one line per call") end
  local i = info(sb.id)
  T.eq(i.tags, {batch = "b-create", run = "r1"})
  T.eq(i.workdir, "/app")
  T.eq(i.resources.milli_cpu, 2000)
  T.eq(i.resources.memory_mb, 4096)
  T.eq(i.timeout_secs, 120 + backend.TIMEOUT_MARGIN)
  -- the same image again: no build, no log
  lines = {}
  new{on_log = function(line) lines[#lines + 1] = line end}
  T.eq(#lines, 0)
  T.eq(backend.reaches_host, false)
  -- a registry tag, an image id
  local tagged = new{image = "debian:bookworm-slim"}
  T.ne(info(tagged.id).image_id, i.image_id)
  T.eq(info(new{image = i.image_id}.id).image_id, i.image_id)
end)

test("exec: streams, exit codes, cwd, env, stdin, merged stderr", function()
  local sb = new{env = {MODE = "demo", DROP = "x"}}
  local r = run(sb, {"sh", "-c", 'echo "$MODE $EXTRA ${DROP-unset} $(pwd)"; echo oops >&2; exit 3'},
                {env = {EXTRA = "exec-env", DROP = false}})
  T.eq(r.code, 3)
  T.eq(r.how, "exit")
  T.eq(r.stdout, "demo exec-env unset /app\n")
  T.eq(r.stderr, "oops\n")
  T.eq(sh(sb, "mkdir -p /app/repo/sub").code, 0)
  T.eq(sh(sb, "pwd", {cwd = "/app/repo/sub"}).stdout, "/app/repo/sub\n")
  -- lines as they come
  local p <close> = assert(sb:exec({"sh", "-c", "echo one; sleep 0.5; echo two"}))
  local got = {}
  for line in p:lines() do got[#got + 1] = line end
  T.eq(got, {"one", "two"})
  T.eq({p:wait()}, {0, "exit"})
  -- stdin: a string, and a pipe
  T.eq(run(sb, {"tr", "a-z", "A-Z"}, {stdin = "shout\n"}).stdout, "SHOUT\n")
  local cat <close> = assert(sb:exec({"tr", "a-z", "A-Z"}, {stdin = "pipe"}))
  assert(cat:write("piped "))
  assert(cat:write("in\n"))
  assert(cat:close_stdin())
  T.eq(cat:read_all(), "PIPED IN\n")
  T.eq({cat:wait()}, {0, "exit"})
  -- stderr merged into stdout
  T.eq(run(sb, {"sh", "-c", "echo a; echo b >&2"}, {stderr = "stdout"}).stdout, "a\nb\n")
  -- a command that does not exist
  r = run(sb, {"no-such-command-xyz"})
  T.eq(r.code, 127)
  T.match(r.stderr, "no%-such%-command%-xyz")
end)

test("exec: timeout; the sandbox's time limit", function()
  local sb = new{timeout = 3}
  local t0 = sched.now()
  local p <close> = assert(sb:exec({"sleep", "30"}, {timeout = 1}))
  local code, how = p:wait()
  T.eq(how, "timeout")
  T.ne(code, 0)
  T.ok(sched.now() - t0 < 6, "ended at its timeout")
  sched.sleep(math.max(0, 3.05 - (sched.now() - t0)))
  -- a server that does not enforce the timeout: runbox's own deadline kills the command
  local other = new()
  local orig, grace = other._msb.exec, backend.KILL_GRACE
  other._msb.exec = function(msb, argv, o) o.timeout = nil; return orig(msb, argv, o) end
  backend.KILL_GRACE = 1
  t0 = sched.now()
  local q <close> = assert(other:exec({"sleep", "30"}, {timeout = 1}))
  local qcode, qhow = q:wait()
  backend.KILL_GRACE = grace
  T.eq({qcode, qhow}, {137, "timeout"})
  T.ok(sched.now() - t0 < 5, "killed by runbox after its timeout and the grace")
  T.eq(info(other.id).execs[2].running, false)
  local _, err = sb:exec({"true"})
  T.eq(err.code, "timeout")
  T.eq(sb.state, "expired")
  T.match(err.message, "time limit of 3s")
  -- files still come out after the limit (Modal keeps it TIMEOUT_MARGIN longer)
  T.eq(type(sb:get_tar("/app")), "string")
end)

test("p:kill reaches the command and what it started; p:kill(9) stops a long command", function()
  local sb = new()
  -- a signal right after the start (the wrapper may still be starting)
  local p <close> = assert(sb:exec({"sh", "-c", 'trap "echo got-term; exit 0" TERM; sleep 60 & wait'}))
  sched.sleep(0.3)
  assert(p:kill())
  T.eq({p:wait()}, {0, "exit"})
  T.eq(p:read_all(), "got-term\n")
  local t0 = sched.now()
  local long <close> = assert(sb:exec({"sh", "-c", "sleep 60 & sleep 60"}))
  assert(long:kill(9))
  T.eq({long:wait()}, {137, "signal"})
  T.ok(sched.now() - t0 < 10)
  T.eq(long:running(), false)
  assert(long:kill(9))            -- an ended command: nothing to do
  for _, e in ipairs(info(sb.id).execs) do T.eq(e.running, false, table.concat(e.command_args, " "):sub(-40)) end
  -- close kills a command still running
  local left = assert(sb:exec({"sleep", "60"}))
  left:close()
  sched.sleep(0.3)
  for _, e in ipairs(info(sb.id).execs) do T.eq(e.running, false) end
end)

test("put_tar / put_dir / get_tar: round trip, hostile archives refused", function()
  T.with_temp_dir(function(dir)
    local sb = new()
    fs.mkdir_p(dir .. "/task/sub")
    fs.write(dir .. "/task/main.py", "print(6 * 7)\n")
    fs.write(dir .. "/task/sub/data.txt", "data\n")
    fs.write(dir .. "/task/skip.pyc", "x")
    fs.chmod(dir .. "/task/main.py", "755")
    assert(sb:put_dir(dir .. "/task", "/app/task", {exclude = {"*.pyc"}}))
    local r = sh(sb, "ls -l /app/task/main.py | cut -c1-10; cat /app/task/sub/data.txt; ls /app/task")
    T.eq(r.stdout, "-rwxr-xr-x\ndata\nmain.py\nsub\n")
    -- an archive (gzip bytes, then a file path)
    local archive = assert(tar.pack(dir .. "/task", {exclude = {"*.pyc"}}))
    assert(sb:put_tar(archive, "/tmp/copy"))
    assert(tar.pack_file(dir .. "/task", dir .. "/task.tar.zst", {compression = "zstd"}))
    assert(sb:put_tar(dir .. "/task.tar.zst", "/app/zst"))
    T.eq(sh(sb, "cat /tmp/copy/sub/data.txt /app/zst/main.py").stdout, "data\nprint(6 * 7)\n")
    -- out again: into a folder, as an archive, one file, a selection
    assert(sb:get_tar("/app/task", dir .. "/out"))
    T.eq(fs.read(dir .. "/out/main.py"), "print(6 * 7)\n")
    T.eq(fs.read(dir .. "/out/sub/data.txt"), "data\n")
    T.eq(fs.stat(dir .. "/out/main.py").mode & 73, 73)
    local data = assert(sb:get_tar("/app/task"))
    local names = {}
    for _, e in ipairs(assert(tar.list_string(data))) do names[#names + 1] = e.path end
    table.sort(names)
    T.eq(names, {"main.py", "sub", "sub/data.txt"})
    assert(sb:get_tar("/app/task/sub/data.txt", dir .. "/one"))
    T.eq(fs.read(dir .. "/one/data.txt"), "data\n")
    assert(sb:get_tar("/app/task", dir .. "/sel", {exclude = {"sub/"}}))
    T.eq(fs.exists(dir .. "/sel/sub"), false)
    T.eq(fs.read(dir .. "/sel/main.py"), "print(6 * 7)\n")
    local _, err = sb:get_tar("/app/nope", dir .. "/nope")
    T.match(err.message, "'/app/nope' does not exist in sandbox")
    -- a hostile archive is refused before anything reaches the sandbox
    local rc = os.execute(([[cd %s && python3 -c '
import tarfile, io
with tarfile.open("evil.tar", "w") as t:
    ti = tarfile.TarInfo("fine.txt"); ti.size = 2; t.addfile(ti, io.BytesIO(b"ok"))
    ti = tarfile.TarInfo("../escaped.txt"); ti.size = 3; t.addfile(ti, io.BytesIO(b"bad"))']]):format(dir))
    T.ok(rc)
    _, err = sb:put_tar(dir .. "/evil.tar", "/app/in")
    T.eq(err.reason, "unsafe")
    T.match(err.message, "%.%./escaped%.txt")
    T.eq(sh(sb, "ls /app/in /app/escaped.txt 2>&1; true").stdout:find("fine.txt"), nil)
    -- a link pointing out of the folder is left out of get_tar
    sh(sb, "mkdir -p /app/links && echo in > /app/links/a && ln -s /etc/passwd /app/links/out && ln -s a /app/links/ok")
    assert(sb:get_tar("/app/links", dir .. "/links"))
    T.eq(fs.lstat(dir .. "/links/out"), nil)
    T.eq(fs.readlink(dir .. "/links/ok"), "a")
    -- a sandbox whose tar writes a hostile archive (an agent can replace it): refused here
    local shadowed = new{env = {PATH = "/app/bin:/usr/bin:/bin"}}
    assert(shadowed:write_file("/app/evil.tar", fs.read(dir .. "/evil.tar")))
    assert(shadowed:write_file("/app/bin/tar", "#!/bin/sh\ncat /app/evil.tar\n", {mode = "755"}))
    _, err = shadowed:get_tar("/app", dir .. "/from-evil")
    T.eq(err.reason, "unsafe")
    T.eq(fs.exists(dir .. "/escaped.txt"), false)
  end, "sbmodal-files")
end)

test("write_file: parents made, links at the file replaced, links on the way refused", function()
  local sb = new()
  assert(sb:write_file("/app/repo/tests/test_ok.py", "def test_ok():\n    assert True\n"))
  T.eq(sh(sb, "cat tests/test_ok.py", {cwd = "/app/repo"}).stdout, "def test_ok():\n    assert True\n")
  assert(sb:write_file("/app/repo/run.sh", "#!/bin/sh\necho ran\n", {mode = "755"}))
  T.eq(run(sb, {"/app/repo/run.sh"}).stdout, "ran\n")
  -- a link at the file: replaced, its target untouched
  sh(sb, "mkdir -p /tmp/target && echo keep > /tmp/target/f && ln -s /tmp/target/f /app/repo/link.txt")
  assert(sb:write_file("/app/repo/link.txt", "new\n"))
  T.eq(sh(sb, "cat /tmp/target/f; cat /app/repo/link.txt; [ -L /app/repo/link.txt ] || echo plain").stdout, "keep\nnew\nplain\n")
  -- a folder on the way that links outside: refused, nothing written there
  sh(sb, "ln -s /tmp/target /app/repo/out")
  local ok, err = sb:write_file("/app/repo/out/f", "overwritten\n")
  T.eq(ok, nil)
  T.eq(err.reason, "unsafe")
  T.match(err.message, "'/app/repo/out' is a symlink to '/tmp/target'")
  T.eq(sh(sb, "cat /tmp/target/f").stdout, "keep\n")
  local _, perr = sb:put_dir(ROOT .. "/tests/lua", "/app/repo/out/x")
  T.eq(perr.reason, "unsafe")
  -- a link that stays inside its folder is fine
  sh(sb, "mkdir -p /app/real && ln -s /app/real /app/repo/inside")
  assert(sb:write_file("/app/repo/inside/f", "fine\n"))
  T.eq(sh(sb, "cat /app/real/f").stdout, "fine\n")
  _, err = sb:write_file("/app/repo", "x")
  T.match(err.message, "is a folder")
end)

test("artifacts live on the volume under <run_id>/, never its root", function()
  T.with_temp_dir(function(dir)
    local sb = new{artifacts = {volume = "codex-artifacts", run_id = "run-art-1"}}
    local other = new{artifacts = {volume = "codex-artifacts", run_id = "run-art-2"}}
    T.eq(sh(sb, "mkdir -p /app/artifacts && echo diff > /app/artifacts/diff.patch && readlink /app/artifacts").stdout,
         backend.ARTIFACTS_MOUNT .. "/run-art-1\n")
    assert(sb:write_file("/app/artifacts/sub/status.txt", "ok\n"))
    assert(other:write_file("/app/artifacts/x.txt", "other\n"))
    local voldir = S.state().volumes["codex-artifacts"].dir
    T.eq(fs.read(voldir .. "/run-art-1/diff.patch"), "diff\n")
    T.eq(fs.read(voldir .. "/run-art-1/sub/status.txt"), "ok\n")
    T.eq(fs.read(voldir .. "/run-art-2/x.txt"), "other\n")
    local top = assert(fs.list(voldir))
    table.sort(top)
    T.eq(top, {"run-art-1", "run-art-2"})
    assert(sb:get_tar("/app/artifacts", dir .. "/artifacts"))
    T.eq(fs.read(dir .. "/artifacts/diff.patch"), "diff\n")
    -- one run cannot write into another's folder through a link
    sh(sb, "ln -s " .. backend.ARTIFACTS_MOUNT .. "/run-art-2 /app/repo-link")
    local _, err = sb:write_file("/app/repo-link/x.txt", "clobbered\n")
    T.eq(err.reason, "unsafe")
    T.eq(fs.read(voldir .. "/run-art-2/x.txt"), "other\n")
    -- and the files stay after the sandbox is gone
    assert(sb:terminate())
    T.eq(fs.read(voldir .. "/run-art-1/diff.patch"), "diff\n")
  end, "sbmodal-art")
end)

test("secrets reach the env, never argv nor the recorded state", function()
  S.secret("openai-api-keys", {OPENAI_API_KEY = "sk-named-5ecret-value"})
  local sb = new{secrets = {"openai-api-keys"}, secret_env = {EXTRA_KEY = "sk-ephemeral-5ecret"}}
  T.eq(sh(sb, 'echo "$OPENAI_API_KEY $EXTRA_KEY"').stdout, "sk-named-5ecret-value sk-ephemeral-5ecret\n")
  T.eq(sh(sb, 'cat /proc/*/cmdline 2>/dev/null | tr "\\0" " " | grep -c "5ecre[t]"; true').stdout, "0\n")
  local st = json.encode(S.state())
  T.eq(st:find("5ecret", 1, true), nil)
  T.ok(#info(sb.id).secret_ids >= 2)
end)

test("errors: missing credentials, secret, volume say what to run; nothing is left", function()
  local c = client()
  local before = #S.state().sandboxes
  local sb, err = backend.create{modal = {env = {}, home = HOME}}
  T.eq(sb, nil)
  T.eq(err.code, "sandbox")
  T.match(err.message, "MODAL_TOKEN_ID")
  T.match(err.message, "modal token new")
  _, err = backend.create{client = c, secrets = {"no-such-secret"}}
  T.eq(err.code, "sandbox")
  T.match(err.message, "Modal secret 'no%-such%-secret' was not found")
  T.match(err.message, "modal secret create no%-such%-secret")
  _, err = backend.create{client = c, volumes = {["/codex"] = "codex-installation"}}
  T.eq(err.code, "sandbox")
  T.match(err.message, "Modal volume 'codex%-installation' was not found")
  T.match(err.message, "run `runbox setup`")
  T.eq(#S.state().sandboxes, before, "no sandbox was created")
  -- a setup that fails after the create: the sandbox is terminated
  _, err = backend.create{client = c, artifacts = {volume = "codex-artifacts", run_id = "r-bad", path = "/usr/not-writable"}}
  T.eq(err.code, "sandbox")
  T.match(err.message, "setting up sandbox sb%-")
  local st = S.state().sandboxes
  T.eq(#st, before + 1)
  T.eq(st[#st].alive, false)
end)

test("missing openai-api-keys secret says `runbox setup`", function()
  local fresh = standin.start{build_run = "skip"}
  local c = assert(modal.client{env = fresh.env(), home = HOME})
  local _, err = backend.create{client = c, secrets = {"openai-api-keys"}}
  fresh.stop()
  T.eq(err.code, "sandbox")
  T.match(err.message, "openai%-api%-keys")
  T.match(err.message, "run `runbox setup`")
end)

test("creation rate limit: at most 5 a second for the whole process", function()
  local c = client()
  backend.set_create_rate(5)
  local n = 10
  local tasks = {}
  for i = 1, n do tasks[i] = sched.spawn(function() return new{client = c, tags = {batch = "rate", n = i}} end) end
  for _, t in ipairs(tasks) do t:join() end
  local times = {}
  for _, call in ipairs(S.state().calls) do
    if call.method == "SandboxCreate" and call.code == "OK" then times[#times + 1] = call.time end
  end
  table.sort(times)
  local last = {table.unpack(times, #times - n + 1)}
  T.ok(last[n] - last[1] >= (n - 5) / 5 - 0.05, ("%d creates in %.2fs"):format(n, last[n] - last[1]))
end)

test("list and terminate_id by tags, terminate idempotent, __close", function()
  local c = client()
  local a = new{tags = {batch = "list-a", run = "1"}}
  new{tags = {batch = "list-b", run = "1"}}
  -- one made by another process (not this backend's object)
  local raw = assert(c:sandbox_create{image = backend.DEFAULT_IMAGE.id or assert(c:image(backend.DEFAULT_IMAGE)),
                                      timeout = 60, tags = {batch = "list-a", run = "2"}})
  local found = assert(backend.list{client = c, tags = {batch = "list-a"}})
  T.eq(#found, 2)
  T.eq(found[1].id, a.id)
  T.eq(found[2].id, raw.id)
  T.eq(found[1].alive, true)
  T.eq(found[1].tags, {batch = "list-a", run = "1"})
  for _, s in ipairs(found) do assert(backend.terminate_id(s.id, {client = c})) end
  T.eq(#assert(backend.list{client = c, tags = {batch = "list-a"}}), 0)
  T.eq(a.state, "terminated")
  T.eq(info(raw.id).alive, false)
  local _, err = backend.terminate_id("sb-NoSuchSandbox000000000", {client = c})
  T.eq(err.code, "not_found")
  -- terminate: idempotent, exec refused after it
  local b = new()
  local p = assert(b:exec({"sleep", "60"}))
  assert(b:terminate())
  assert(b:terminate())
  local code = p:wait()
  T.ne(code, 0)
  local _, eerr = b:exec({"true"})
  T.match(eerr.message, "was terminated")
  T.eq(info(b.id).alive, false)
  -- <close>
  local id
  do
    local d <close> = assert(backend.create{client = c, timeout = 60})
    id = d.id
    T.eq(info(id).alive, true)
  end
  T.eq(info(id).alive, false)
  -- running execs
  local e = new()
  local q <close> = assert(e:exec({"sleep", "60"}))
  T.eq(#e:running(), 1)
end)

test("a cancelled task (Ctrl-C) terminates its sandbox, also in the middle of create", function()
  local c = client()
  local id
  local t = sched.spawn(function()
    local sb <close> = assert(backend.create{client = c, timeout = 60})
    id = sb.id
    sched.sleep(30)
  end)
  while not id do sched.sleep(0.05) end
  t:cancel("interrupted")
  t:wait()
  T.eq(info(id).alive, false)
  -- cancelled while the setup command runs: the sandbox just created goes too
  local before = #S.state().sandboxes
  S.admin{method = "TaskExecStart", kind = "slow", seconds = 3, count = 1}
  t = sched.spawn(function() return backend.create{client = c, timeout = 60} end)
  while #S.state().sandboxes == before do sched.sleep(0.05) end
  sched.sleep(0.3)
  t:cancel("interrupted")
  t:wait()
  S.admin(nil)
  local st = S.state().sandboxes
  T.eq(#st, before + 1)
  T.eq(st[#st].alive, false)
  -- cancelled while SandboxCreate's answer is on its way: the server made a sandbox whose id runbox
  -- never learned; the caller's tags find it and it goes too
  before = #S.state().sandboxes
  S.admin{method = "SandboxCreate", kind = "slow_reply", seconds = 2, count = 1}
  t = sched.spawn(function() return backend.create{client = c, timeout = 60, tags = {run = "orphan-1"}} end)
  while #S.state().sandboxes == before do sched.sleep(0.05) end
  t:cancel("interrupted")
  t:wait()
  S.admin(nil)
  st = S.state().sandboxes
  T.eq(#st, before + 1)
  T.eq(st[#st].tags.run, "orphan-1")
  T.eq(st[#st].alive, false, "the sandbox made for the interrupted create was terminated")
end)

test("a sandbox that dies mid-run: the exec ends, later ones fail, terminate still works", function()
  S.admin{kind = "sandbox_dies", after = 1}
  local sb = new()
  local p <close> = assert(sb:exec({"sleep", "30"}))
  local t0 = sched.now()
  local code = p:wait()
  T.ok(code == nil or code ~= 0)
  T.ok(sched.now() - t0 < 10)
  local _, err = sb:exec({"true"})
  T.eq(err.code, "sandbox")
  T.match(err.message, "has ended")
  assert(sb:terminate())
  S.admin(nil)
end)

test("nothing is left running in the stand-in", function()
  cleanup()
  sched.sleep(0.2)
  for _, s in ipairs(S.state().sandboxes) do
    T.eq(s.alive, false, s.id)
    T.eq(#s.pids, 0, s.id)
  end
end)

local ok, err = pcall(T.run)
if S then S.stop() end
if HOME then fs.remove_tree(HOME) end
if not ok then error(err, 0) end
