-- The local sandbox backend against the real bwrap: isolation (read-only host, private /tmp,
-- hidden homes, cleared environment, network off), limits, files in and out, terminate, and
-- finding a sandbox left by a runbox killed with SIGKILL.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"
local util = require "runbox.util"
local tar = require "runbox.tar"
local httpd = require "runbox.httpd"
local sandbox = require "runbox.sandbox"

local backend = assert(sandbox.get("local"))
T.timeout = 30

-- Runs fn(dir, new) in a temp dir; new(opts) creates a sandbox under dir with a private registry
-- (dir/registry); every sandbox made is terminated afterwards.
local function with_sandboxes(fn)
  return T.with_temp_dir(function(dir)
    local made, n = {}, 0
    local function new(opts)
      opts = opts or {}
      n = n + 1
      opts.root = opts.root or (dir .. "/sb" .. n)
      opts.registry = opts.registry or (dir .. "/registry")
      local sb = assert(backend.create(opts))
      made[#made + 1] = sb
      return sb
    end
    local ok, err = pcall(fn, dir, new)
    for _, sb in ipairs(made) do sb:terminate() end
    if not ok then error(err, 0) end
  end, "runbox-sbtest")
end

-- Runs argv in sb to its end: {code=, how=, stdout=, stderr=}.
local function run(sb, argv, opts)
  local p <close> = assert(sb:exec(argv, opts))
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local out = p:read_all("stdout")
  local _, err = errtask:wait()
  local code, how = p:wait()
  return {code = code, how = how, stdout = out, stderr = err}
end

local function sh(sb, line, opts) return run(sb, {"bash", "-c", line}, opts) end

-- Host processes (not zombies) whose raw command line (NUL-separated) passes match: what `ps`
-- would show.
local function host_procs(match)
  local out = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:match("^%d+$") and name ~= tostring(util.pid()) then
      local cmdline = fs.read("/proc/" .. name .. "/cmdline")
      if cmdline and match(cmdline) and T.pid_alive(tonumber(name)) then out[#out + 1] = tonumber(name) end
    end
  end
  return out
end

-- Host processes running exactly `sleep SECONDS`.
local function sleeps(seconds)
  return host_procs(function(c) return c == "sleep\0" .. seconds .. "\0" end)
end

-- Host processes with text anywhere in their command line.
local function with_text(text)
  return host_procs(function(c) return c:find(text, 1, true) ~= nil end)
end

-- Waits up to `seconds` for cond() to be true.
local function eventually(cond, seconds)
  local t0 = sched.now()
  while not cond() do
    if sched.now() - t0 > (seconds or 5) then return false end
    sched.sleep(0.02)
  end
  return true
end

local function marker() return ("%d.%s"):format(100 + math.random(0, 800), util.random_hex(4):gsub("%a", "1")) end

---------------------------------------------------------------------------------------------------

T.test("sandbox.get: local, an unknown name lists the known ones", function()
  T.eq(sandbox.get("local"), backend)
  T.eq(sandbox.get(), backend)
  local b, err = sandbox.get("lxc")
  T.eq(b, nil)
  T.match(err.message, "unknown sandbox backend 'lxc' %(known: docker, local, modal%)")
  T.raises("name must be a string", sandbox.get, 42)
end)

T.test("exec: stdout, stderr, exit code, stdin as a string and as a pipe", with_sandboxes(function(_, new)
  local sb = new()
  local r = sh(sb, "echo out; echo err >&2; exit 3")
  T.eq({r.code, r.how, r.stdout, r.stderr}, {3, "exit", "out\n", "err\n"})
  r = run(sb, {"tr", "a-z", "A-Z"}, {stdin = "fed on stdin\n"})
  T.eq(r.stdout, "FED ON STDIN\n")
  local p <close> = assert(sb:exec({"cat"}, {stdin = "pipe"}))
  assert(p:write("line 1\n"))
  T.eq(p:lines()(), "line 1")
  assert(p:write("line 2\n"))
  p:close_stdin()
  T.eq(p:read_all(), "line 2\n")
  T.eq({p:wait()}, {0, "exit"})
  r = sh(sb, "pwd; hostname; id -u")
  T.eq(r.stdout, ("/app\nsandbox\n%d\n"):format(tonumber(fs.read("/proc/self/status"):match("\nUid:%s+(%d+)"))))
  r = run(sb, {"pwd"}, {cwd = "/tmp"})
  T.eq(r.stdout, "/tmp\n")
  local p2, err = sb:exec({"true"}, {cwd = "/app/missing"})
  T.eq(p2, nil)
  T.match(err.message, "cwd '/app/missing' is not a folder")
  r = run(sb, {"no-such-command-here"})
  T.eq(r.code, 1)
  T.match(r.stderr, "no%-such%-command%-here")
end))

T.test("the host system is read-only, capabilities are gone", with_sandboxes(function(_, new)
  local sb = new()
  local r = sh(sb, "touch /usr/runbox-test 2>&1; echo rc=$?; mkdir /etc/x 2>&1; echo rc=$?")
  T.match(r.stdout, "Read%-only file system")
  T.ok(not r.stdout:find("rc=0"), r.stdout)
  T.eq(fs.exists("/usr/runbox-test"), false)
  r = sh(sb, "grep CapEff /proc/self/status; mount -o remount,rw /usr 2>/dev/null; echo mount=$?; touch /newtop 2>/dev/null; echo top=$?")
  T.match(r.stdout, "CapEff:%s+0+\n")
  T.ok(not r.stdout:find("mount=0") and not r.stdout:find("top=0"), r.stdout)
  -- system tools are the host's
  r = sh(sb, "test -x /usr/bin/bash && echo yes")
  T.eq(r.stdout, "yes\n")
  -- root-only secrets of the host are blanked even for a runbox running as root
  r = sh(sb, "wc -c < /etc/shadow 2>/dev/null || echo unreadable")
  local root = fs.read("/proc/self/status"):match("\nUid:%s+(%d+)") == "0"
  if fs.exists("/etc/shadow") then T.eq(r.stdout, root and "0\n" or "unreadable\n") end
end))

T.test("/app is writable and is the host folder root/app", with_sandboxes(function(dir, new)
  local sb = new{root = dir .. "/run/sandbox"}
  T.eq(sb.root, assert(fs.realpath(dir .. "/run/sandbox")))
  local r = sh(sb, "mkdir -p /app/out && echo from-inside > /app/out/f.txt && cat /app/seed.txt",
               {})
  T.eq(r.code, 1)   -- seed.txt not there yet
  T.eq(fs.read(sb.root .. "/app/out/f.txt"), "from-inside\n")
  fs.write(sb.root .. "/app/seed.txt", "from-host")
  T.eq(sh(sb, "cat /app/seed.txt").stdout, "from-host")
  T.eq(assert(sb:host_path("/app/out/f.txt")), sb.root .. "/app/out/f.txt")
  -- $HOME inside is root/home, kept across execs
  sh(sb, "echo remembered > ~/.note")
  T.eq(sh(sb, "echo $HOME; cat ~/.note").stdout, "/root\nremembered\n")
  T.eq(fs.read(sb.root .. "/home/.note"), "remembered\n")
end))

T.test("/tmp is private to the sandbox", with_sandboxes(function(dir, new)
  local sb = new()
  local name = "runbox-sbtest-host-" .. util.random_hex(6)
  fs.write("/tmp/" .. name, "host secret")
  local r = sh(sb, "ls /tmp/" .. name .. " 2>&1; echo inside > /tmp/mine; ls -A /tmp")
  fs.remove("/tmp/" .. name)
  T.match(r.stdout, "No such file")
  T.eq(r.stdout:match("\n(.*)$"), "mine\n")
  T.eq(fs.read(sb.root .. "/tmp/mine"), "inside\n")
  T.eq(fs.exists("/tmp/mine") and fs.read("/tmp/mine") == "inside\n", false)
  -- nothing of the host's /run, /home, /root or of this test's folder is visible
  r = sh(sb, "find /run /root /home -mindepth 1 | wc -l; ls " .. dir .. " 2>&1")
  T.match(r.stdout, "^0\nls: cannot access '" .. dir:gsub("%p", "%%%0") .. "': No such file")
end))

T.test("secrets in the user's HOME are not visible inside", T.with_temp_dir(function(dir)
  -- the fake home must lie outside /tmp (which is private anyway): the current folder
  local home = assert(fs.realpath(".")) .. "/.runbox-sbtest-home-" .. util.random_hex(6)
  local guard <close> = setmetatable({}, {__close = function() fs.remove_tree(home) end})
  assert(fs.mkdir_p(home .. "/.ssh"))
  assert(fs.write(home .. "/.ssh/id_test", "PRIVATE KEY"))
  assert(fs.write(home .. "/.modal.toml", "token"))
  fs.write(dir .. "/child.lua", [[
    local backend = require("runbox.sandbox").get("local")
    local sb <close> = assert(backend.create{root = arg[1] .. "/sb", registry = arg[1] .. "/registry"})
    local p <close> = assert(sb:exec({"bash", "-c", 'cat "$1/.ssh/id_test" "$1/.modal.toml" 2>&1; ls -A ~', "x", os.getenv("HOME")}))
    io.write(p:read_all())
  ]])
  local r = assert(proc.run{T.runbox_bin(), dir .. "/child.lua", dir, env = {HOME = home}, timeout = 20})
  T.eq(r.code, 0, r.stderr)
  T.ok(not r.stdout:find("PRIVATE KEY") and not r.stdout:find("token"), r.stdout)
  T.match(r.stdout, "No such file or directory")
end))

T.test("the environment is cleared: only the sandbox's and the exec's variables", with_sandboxes(function(dir, new)
  fs.write(dir .. "/.env", "RUNBOX_TEST_SECRET=s3cr3t-host-value\n")
  assert(util.load_dotenv(dir .. "/.env", {apply = true, override = true}))
  T.eq(os.getenv("RUNBOX_TEST_SECRET"), "s3cr3t-host-value")
  local sb = new{env = {FROM_SANDBOX = "sb", TERM = "xterm"}, secrets = {API_KEY = "k"}}
  local r = run(sb, {"env"})
  local vars = {}
  for k, v in r.stdout:gmatch("([%w_]+)=([^\n]*)") do vars[k] = v end
  T.eq(vars.RUNBOX_TEST_SECRET, nil)
  T.eq(vars.FROM_SANDBOX, "sb")
  T.eq(vars.API_KEY, "k")
  T.ok(not fs.read(sb.root .. "/sandbox.json"):find("API_KEY"), "no variables in the state file")
  T.eq(vars.TERM, "xterm")
  T.eq(vars.LANG, "C.UTF-8")
  T.eq(vars.HOME, "/root")
  T.eq(vars.PATH, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
  -- passed explicitly: present inside, never in any command line on the host
  local p <close> = assert(sb:exec({"bash", "-c", 'echo "$RUNBOX_TEST_SECRET"; read x; exit 0'},
                                   {env = {RUNBOX_TEST_SECRET = "given-secret-value", TERM = false}, stdin = "pipe"}))
  T.eq(p:lines()(), "given-secret-value")
  T.eq(#with_text("given-secret-value"), 0)
  p:close_stdin()
  T.eq(p:wait(), 0)
  T.ok(not run(sb, {"env"}, {env = {TERM = false}}).stdout:find("TERM="), "false unsets a variable")
end))

T.test("network: the host's loopback services are reachable only with network = true", with_sandboxes(function(_, new)
  local srv <close> = assert(httpd.serve({host = "127.0.0.1", port = 0}, function(_, res) res:send("pong from host") end))
  local probe = ('exec 3<>/dev/tcp/127.0.0.1/%d && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3'):format(srv.port)
  local on = new{network = true}
  local r = sh(on, probe, {timeout = 10})
  T.match(r.stdout, "pong from host")
  local off = new{network = false}
  r = sh(off, probe .. "; echo rc=$?", {timeout = 10})
  T.ok(not r.stdout:find("pong"), r.stdout)
  T.match(r.stdout, "rc=1")
  -- only a private loopback
  r = sh(off, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
  T.eq(r.stdout, "lo\n")
end))

T.test("per-exec timeout kills the whole tree inside", with_sandboxes(function(_, new)
  local sb = new()
  local m = marker()
  local t0 = sched.now()
  local r = sh(sb, ("sleep %s & setsid sleep %s & sleep %s; echo never"):format(m, m, m), {timeout = 0.5})
  T.eq(r.how, "timeout")
  T.ok(sched.now() - t0 < 5, "returned promptly")
  T.eq(r.stdout, "")
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
  T.eq(#sb:running(), 0)
  -- the sandbox goes on
  T.eq(sh(sb, "echo still here").stdout, "still here\n")
end))

T.test("background processes end with their exec", with_sandboxes(function(_, new)
  local sb = new()
  local m = marker()
  local r = sh(sb, ("nohup sleep %s >/dev/null 2>&1 & echo started"):format(m))
  T.eq(r.stdout, "started\n")
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
end))

T.test("the whole-sandbox time limit kills every exec and refuses later ones", with_sandboxes(function(_, new)
  local sb = new{timeout = 0.8, tags = {run = "limit"}}
  local m = marker()
  local t0 = sched.now()
  local a = sched.spawn(function() return sh(sb, "sleep " .. m, {timeout = 60}) end)
  local b = sched.spawn(function() return sh(sb, "sleep " .. m) end)
  local ra, rb = select(2, a:wait()), select(2, b:wait())
  T.eq({ra.how, rb.how}, {"timeout", "timeout"})
  T.ok(sched.now() - t0 < 4, "killed at the limit")
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
  local p, err = sb:exec({"true"})
  T.eq(p, nil)
  T.eq(err.code, "timeout")
  T.match(err.message, "reached its time limit of 0.8s")
  T.eq(json.decode_file(sb.root .. "/sandbox.json").state, "expired")
  -- files can still be collected after the limit
  assert(fs.write(sb.root .. "/app/result.txt", "kept"))
  T.eq(assert(sb:get_tar("/app/result.txt")) ~= nil, true)
end))

T.test("write_file writes from the host; a symlink folder is refused, a symlink file replaced", with_sandboxes(function(dir, new)
  local sb = new()
  assert(sb:write_file("/app/repo/tests/test_a.py", "print('a')\n"))
  T.eq(sh(sb, "cat /app/repo/tests/test_a.py").stdout, "print('a')\n")
  assert(sb:write_file("/app/repo/tests/test_a.py", "x"))          -- replaced
  T.eq(fs.read(sb.root .. "/app/repo/tests/test_a.py"), "x")
  -- links made inside the sandbox: a folder pointing at a host folder, a file at a host file
  fs.mkdir_p(dir .. "/outside")
  fs.write(dir .. "/outside/target.py", "original")
  sh(sb, ("ln -s %s /app/repo/linked && ln -s %s/target.py /app/repo/file.py"):format(dir .. "/outside", dir .. "/outside"))
  local ok, err = sb:write_file("/app/repo/linked/test_x.py", "evil")
  T.eq(ok, nil)
  T.match(err.message, "goes through a symlink made inside the sandbox")
  T.eq(fs.exists(dir .. "/outside/test_x.py"), false)
  assert(sb:write_file("/app/repo/file.py", "new"))
  T.eq(fs.read(dir .. "/outside/target.py"), "original")
  T.eq(fs.lstat(sb.root .. "/app/repo/file.py").type, "file")
  ok, err = sb:write_file("/usr/bin/evil", "x")
  T.eq(ok, nil)
  T.match(err.message, "outside the sandbox's writable folders")
  T.raises("data must be a string", sb.write_file, sb, "/app/x", 3)
end))

T.test("get_tar of a small plain tree copies file by file, modes kept; links take the archive path", with_sandboxes(function(dir, new)
  local sb = new()
  sh(sb, "mkdir -p /app/artifacts/sub && echo d > /app/artifacts/diff.patch && echo s > /app/artifacts/sub/s.txt"
         .. " && chmod 700 /app/artifacts/sub/s.txt && mkfifo /app/fifo")
  assert(fs.mkdir_p(dir .. "/out"))
  assert(fs.write(dir .. "/out/diff.patch", "old"))                 -- replaced
  assert(sb:get_tar("/app/artifacts", dir .. "/out"))
  T.eq(fs.read(dir .. "/out/diff.patch"), "d\n")
  T.eq(fs.read(dir .. "/out/sub/s.txt"), "s\n")
  T.eq(("%o"):format(fs.stat(dir .. "/out/sub/s.txt").mode), "700")
  -- the copy refuses what is not a regular file, even if asked directly
  local ok, err = fs.copy_file(sb.root .. "/app/fifo", dir .. "/fifo-copy", {nofollow = true})
  T.eq(ok, nil)
  T.eq(err.reason, "invalid")
  -- a link inside the tree: the archive path, which keeps links that stay inside
  sh(sb, "ln -s diff.patch /app/artifacts/again.patch && ln -s /etc/passwd /app/artifacts/evil")
  assert(sb:get_tar("/app/artifacts", dir .. "/out2"))
  T.eq(fs.lstat(dir .. "/out2/again.patch").type, "link")
  T.eq(fs.lstat(dir .. "/out2/evil"), nil)
end))

T.test("put_tar, put_dir and get_tar round trip; hostile paths are refused", with_sandboxes(function(dir, new)
  local sb = new()
  fs.mkdir_p(dir .. "/src/sub")
  fs.write(dir .. "/src/a.txt", "alpha")
  fs.write(dir .. "/src/sub/b.txt", "beta")
  fs.write(dir .. "/src/skip.log", "noise")
  local data = assert(tar.pack(dir .. "/src"))
  assert(sb:put_tar(data, "/app/task"))
  T.eq(sh(sb, "cat /app/task/a.txt /app/task/sub/b.txt").stdout, "alphabeta")
  assert(tar.pack_file(dir .. "/src", dir .. "/src.tgz"))
  assert(sb:put_tar(dir .. "/src.tgz", "/tmp/unpacked"))
  T.eq(sh(sb, "cat /tmp/unpacked/a.txt").stdout, "alpha")
  assert(sb:put_dir(dir .. "/src", "/app/copy", {exclude = {"*.log"}}))
  T.eq(sh(sb, "ls /app/copy").stdout, "a.txt\nsub\n")
  -- out again: a folder, a file, and as an archive string
  sh(sb, "mkdir -p /app/artifacts/deep && echo made > /app/artifacts/deep/x && ln -s /etc/passwd /app/artifacts/abs")
  assert(sb:get_tar("/app/artifacts", dir .. "/out"))
  T.eq(fs.read(dir .. "/out/deep/x"), "made\n")
  T.eq(fs.lstat(dir .. "/out/abs"), nil)      -- a link pointing out of the folder is left out
  assert(sb:get_tar("/app/task/a.txt", dir .. "/one"))
  T.eq(fs.read(dir .. "/one/a.txt"), "alpha")
  local archive = assert(sb:get_tar("/app/task"))
  local names = {}
  for _, e in ipairs(assert(tar.list_string(archive))) do names[#names + 1] = e.path:gsub("/$", "") end
  table.sort(names)
  T.eq(names, {"a.txt", "skip.log", "sub", "sub/b.txt"})
  -- an archive entry escaping the folder
  local evil = dir .. "/evil.tar"
  assert(proc.run{"python3", "-c", [[
import tarfile, io, sys
with tarfile.open(sys.argv[1], "w") as t:
    ti = tarfile.TarInfo("../../escaped.txt"); ti.size = 3; t.addfile(ti, io.BytesIO(b"bad"))]], evil})
  local ok, err = sb:put_tar(evil, "/app/x")
  T.eq(ok, nil)
  T.eq(err.reason, "unsafe")
  T.match(err.message, "put_tar into '/app/x'")
  T.eq(fs.exists(sb.root .. "/escaped.txt") or fs.exists(sb.root .. "/app/escaped.txt"), false)
  -- paths outside the writable folders, and symlinks made inside
  ok, err = sb:put_tar(data, "/usr/local/evil")
  T.eq(ok, nil)
  T.match(err.message, "'/usr/local/evil' is outside the sandbox's writable folders %(/app, /root, /tmp%)")
  ok, err = sb:put_tar(data, "/app/../etc")
  T.match(err.message, "contains '..'")
  sh(sb, "ln -s " .. dir .. "/victim /app/link")
  fs.mkdir_p(dir .. "/victim")
  ok, err = sb:put_tar(data, "/app/link/inside")
  T.eq(ok, nil)
  T.match(err.message, "goes through a symlink made inside the sandbox %('/app/link'%)")
  T.eq(fs.list(dir .. "/victim"), {})
  ok, err = sb:get_tar("/app/link", dir .. "/stolen")
  T.eq(ok, nil)
  T.match(err.message, "symlink")
  ok, err = sb:get_tar("/app/nothing", dir .. "/o2")
  T.match(err.message, "'/app/nothing' does not exist")
end))

T.test("terminate kills running execs, keeps the files, is idempotent", with_sandboxes(function(dir, new)
  local sb = new{tags = {run = "t1"}}
  local m = marker()
  local p = assert(sb:exec({"sleep", m}))
  local p2 = assert(sb:exec({"bash", "-c", "sleep " .. m .. " & sleep " .. m}))
  sh(sb, "echo kept > /app/file")
  T.ok(eventually(function() return #sleeps(m) == 3 end), "sleeps started")
  T.eq(#backend.list{registry = dir .. "/registry", tags = {run = "t1"}}, 1)
  T.eq(backend.list{registry = dir .. "/registry", tags = {run = "t1"}}[1].alive, true)
  assert(sb:terminate())
  T.eq(select(2, p:wait()), "signal")
  T.eq(select(2, p2:wait()), "signal")
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
  T.eq(fs.read(sb.root .. "/app/file"), "kept\n")
  T.eq(json.decode_file(sb.root .. "/sandbox.json").state, "terminated")
  T.eq(backend.list{registry = dir .. "/registry", tags = {run = "t1"}}, {})
  assert(sb:terminate())
  local p3, err = sb:exec({"true"})
  T.eq(p3, nil)
  T.match(err.message, "was terminated")
  p:close(); p2:close()
  -- terminated at once after the exec started: nothing survives
  local m2 = marker()
  for _ = 1, 5 do
    local sbx = new()
    assert(sbx:exec({"sleep", m2}))
    sbx:terminate()
  end
  T.ok(eventually(function() return #sleeps(m2) == 0 end), "no sleep left after quick terminates")
  -- <close> terminates; destroy removes the files
  local root
  do
    local sb2 <close> = new()
    root = sb2.root
    sh(sb2, "true")
  end
  T.eq(json.decode_file(root .. "/sandbox.json").state, "terminated")
  local sb3 = new()
  assert(sb3:destroy())
  T.eq(fs.exists(sb3.root), false)
  -- without a root, a temp folder that goes with terminate
  local sb4 = assert(backend.create{registry = dir .. "/registry"})
  local tmp_root = sb4.root
  T.eq(fs.stat(tmp_root .. "/app").type, "dir")
  sb4:terminate()
  T.eq(fs.exists(tmp_root), false)
end))

T.test("a cancelled task's <close> terminates its sandbox", with_sandboxes(function(dir, new)
  local m = marker()
  local started = sched.event()
  local sb
  local t = sched.spawn(function()
    sb = new{root = dir .. "/cancelled"}
    local guard <close> = sb
    local p <close> = assert(sb:exec({"sleep", m}))
    started:set()
    p:wait()
  end)
  started:wait()
  t:cancel("test")
  t:wait()
  T.eq(sb.state, "terminated")
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
end))

T.test("list by tags; terminate_id from another process", with_sandboxes(function(dir, new)
  local registry = dir .. "/registry"
  local a = new{tags = {batch = "b1", run = "r1"}}
  local b = new{tags = {batch = "b1", run = "r2"}}
  new{tags = {batch = "b2"}}
  local ids = {}
  for _, s in ipairs(backend.list{registry = registry, tags = {batch = "b1"}}) do
    ids[#ids + 1] = s.id
    T.eq({s.alive, s.owner_alive, s.state, s.tags.batch}, {false, true, "running", "b1"})
  end
  table.sort(ids)
  local want = {a.id, b.id}
  table.sort(want)
  T.eq(ids, want)
  T.eq(#backend.list{registry = registry}, 3)
  T.eq(#backend.list{registry = registry, tags = {batch = "b1", run = "r2"}}, 1)
  T.eq(backend.list{registry = dir .. "/empty"}, {})
  -- a sandbox busy in another live runbox, terminated from here
  local m = marker()
  fs.write(dir .. "/busy.lua", [[
    local backend = require("runbox.sandbox").get("local")
    local sb = assert(backend.create{root = arg[1] .. "/busy", registry = arg[1] .. "/registry", tags = {batch = "busy"}})
    local p = assert(sb:exec({"sleep", arg[2]}))
    print("ready " .. sb.id); io.stdout:flush()
    print("ended " .. select(2, p:wait())); io.stdout:flush()
    local again, err = sb:exec({"true"})
    print(again == nil and err.message or "exec still works"); io.stdout:flush()
  ]])
  local child <close> = assert(proc.spawn{T.runbox_bin(), dir .. "/busy.lua", dir, m})
  local lines = child:lines()
  local id = lines():match("^ready (%S+)")
  T.ok(id, "child made a sandbox")
  local found = backend.list{registry = registry, tags = {batch = "busy"}}
  T.eq({#found, found[1].id, found[1].alive, found[1].owner_alive}, {1, id, true, true})
  assert(backend.terminate_id(id, {registry = registry}))
  T.eq(lines(), "ended signal")
  T.eq(lines(), "sandbox " .. id .. " was terminated: create a new one")   -- its owner stops too
  T.eq(#sleeps(m), 0)
  T.eq(backend.list{registry = registry, tags = {batch = "busy"}}, {})
  local none, err = backend.terminate_id(id, {registry = registry})
  T.eq({none, err.code}, {nil, "not_found"})
  T.raises("id must be a sandbox id", backend.terminate_id, "../x")
end))

T.test("a sandbox left by a runbox killed with SIGKILL is found by its tags and cleaned", T.with_temp_dir(function(dir)
  local registry = dir .. "/registry"
  local m = marker()
  local batch = "batch-" .. util.random_hex(4)
  fs.write(dir .. "/crash.lua", [[
    local backend = require("runbox.sandbox").get("local")
    local sb = assert(backend.create{root = arg[1] .. "/left", registry = arg[1] .. "/registry",
                                     tags = {batch = arg[3]}})
    local p = assert(sb:exec({"sleep", arg[2]}))
    print("ready " .. sb.id); io.stdout:flush()
    p:wait()
  ]])
  local child <close> = assert(proc.spawn{T.runbox_bin(), dir .. "/crash.lua", dir, m, batch})
  local id = child:lines()():match("^ready (%S+)")
  T.ok(id, "child made a sandbox")
  T.ok(eventually(function() return #sleeps(m) == 1 end), "sleep running")
  child:kill(9)
  T.eq(select(2, child:wait()), "signal")
  local found = backend.list{registry = registry, tags = {batch = batch}}
  T.eq({#found, found[1].id, found[1].owner_alive, found[1].state}, {1, id, false, "running"})
  assert(backend.terminate_id(id, {registry = registry}))
  T.eq(backend.list{registry = registry, tags = {batch = batch}}, {})
  T.ok(eventually(function() return #sleeps(m) == 0 end), "no sleep left on the host")
  local state = json.decode_file(dir .. "/left/sandbox.json")
  T.eq(state.state, "terminated")
  T.match(state.reason, "its runbox process had ended")
end))

T.test("a root in use is refused; a dead sandbox's root is taken over", with_sandboxes(function(dir, new)
  local registry = dir .. "/registry"
  local first = new{root = dir .. "/shared"}
  local p <close> = assert(first:exec({"sleep", marker()}))
  local sb, err = backend.create{root = dir .. "/shared", registry = registry}
  T.eq(sb, nil)
  T.match(err.message, "is in use by sandbox " .. first.id:gsub("%p", "%%%0") .. ", which is still running")
  first:terminate()
  new{root = dir .. "/shared"}
  -- a runbox that ends without terminating leaves a registry entry; a new sandbox on that root
  -- replaces it
  fs.write(dir .. "/leave.lua", [[
    local backend = require("runbox.sandbox").get("local")
    print(assert(backend.create{root = arg[1] .. "/left", registry = arg[1] .. "/registry", tags = {k = "left"}}).id)
  ]])
  local r = assert(proc.run{T.runbox_bin(), dir .. "/leave.lua", dir, timeout = 20})
  T.eq(r.code, 0, r.stderr)
  local left = backend.list{registry = registry, tags = {k = "left"}}
  T.eq({#left, left[1].id .. "\n", left[1].owner_alive, left[1].alive}, {1, r.stdout, false, false})
  new{root = dir .. "/left"}
  T.eq(backend.list{registry = registry, tags = {k = "left"}}, {})
end))

T.test("20 sandboxes at once", with_sandboxes(function(_, new)
  local t0 = sched.now()
  local tasks = {}
  for i = 1, 20 do
    tasks[i] = sched.spawn(function()
      local sb <close> = new{tags = {n = i}, network = i % 2 == 0}
      sh(sb, "echo " .. i .. " > /app/n")
      return sh(sb, "cat /app/n; sleep 0.2").stdout
    end)
  end
  for i, r in ipairs(sched.wait_all(tasks)) do
    T.eq(r[1], true, r[2])
    T.eq(r[2], i .. "\n")
  end
  T.ok(sched.now() - t0 < 10, "in parallel")
end))

T.test("bad options: clear errors", with_sandboxes(function(dir, new)
  local sb, err = backend.create{root = dir .. "/w", workdir = "/usr/app", registry = dir .. "/registry"}
  T.eq(sb, nil)
  T.match(err.message, "workdir '/usr/app' is inside the host's read%-only /usr")
  sb, err = backend.create{root = dir .. "/w", workdir = "app", registry = dir .. "/registry"}
  T.match(err.message, "workdir 'app' is not an absolute path")
  T.raises("timeout must be a positive number", backend.create, {timeout = -1})
  T.raises("tags must be a table", backend.create, {tags = "x"})
  T.raises("env has a bad variable name", backend.create, {env = {["A=B"] = "1"}})
  local ok = new{workdir = "/workspace/project"}
  T.eq(run(ok, {"pwd"}).stdout, "/workspace/project\n")
  T.raises("argv must be a non%-empty list", ok.exec, ok, {})
  T.raises("env%.X must be a string", ok.exec, ok, {"true"}, {env = {X = {}}})
  -- a registry folder others could write to is refused
  fs.mkdir_p(dir .. "/open/sandboxes")
  fs.chmod(dir .. "/open", "777")
  sb, err = backend.create{root = dir .. "/w2", registry = dir .. "/open/sandboxes"}
  T.eq(sb, nil)
  T.match(err.message, "writable by others")
end))

T.test("a registry folder removed between two creates is made again", T.with_temp_dir(function(dir)
  local reg = dir .. "/registry"
  local a = assert(backend.create{root = dir .. "/a", registry = reg})
  a:destroy()
  assert(fs.remove_tree(reg))
  local b = assert(backend.create{root = dir .. "/b", registry = reg})
  T.ok(fs.exists(reg .. "/" .. b.id .. ".json"), "the new sandbox is registered")
  b:destroy()
end))

T.test("sandbox paths are cleaned the same way whether they need it or not", function()
  local clean = require("runbox.sandbox.checks").clean_path
  for _, c in ipairs{{"/", "/"}, {"/app", "/app"}, {"/app/", "/app"}, {"//app//x/", "/app/x"},
                     {"/app/./x", "/app/x"}, {"/app/.git/x", "/app/.git/x"}, {"/.", "/"},
                     {"/app/x.y/z", "/app/x.y/z"}, {"/app/..x/y", "/app/..x/y"}, {"/app/.", "/app"},
                     {"/app/./", "/app"}, {"/app/x/.", "/app/x"}} do
    T.eq(clean(c[1]), c[2], c[1])
  end
  T.eq({clean("/app/../etc")}, {nil, "contains '..'"})
  T.eq({clean("/app/..")}, {nil, "contains '..'"})
  T.eq({clean("app")}, {nil, "is not an absolute path"})
  T.eq({clean(5)}, {nil, "is not an absolute path"})
end)

T.test("binds: a host folder shown read-only or read-write", with_sandboxes(function(dir, new)
  fs.mkdir_p(dir .. "/tools")
  fs.write(dir .. "/tools/tool.sh", "echo tool")
  fs.mkdir_p(dir .. "/shared")
  local sb = new{binds = {["/tools"] = dir .. "/tools", ["/data/shared"] = {host = dir .. "/shared", rw = true}}}
  local r = sh(sb, "bash /tools/tool.sh; touch /tools/x 2>/dev/null; echo rc=$?; echo w > /data/shared/out")
  T.eq(r.stdout, "tool\nrc=1\n")
  T.eq(fs.read(dir .. "/shared/out"), "w\n")
  T.eq(assert(sb:host_path("/data/shared/out")), dir .. "/shared/out")
  T.eq(sb:host_path("/tools/tool.sh"), nil)
  T.raises("binds key '/opt/../tools' contains '..'", backend.create, {binds = {["/opt/../tools"] = dir}})
  local none, err = backend.create{root = dir .. "/b", registry = dir .. "/registry", binds = {["/x"] = dir .. "/missing"}}
  T.eq(none, nil)
  T.match(err.message, "the host path '.*/missing' does not exist")
end))

T.run()
