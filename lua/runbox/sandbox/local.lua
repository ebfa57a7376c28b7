-- The local sandbox backend: every exec is one bubblewrap (`bwrap`) process that sees the host's
-- system folders read-only, the sandbox's own folders read-write (/app, /tmp, $HOME) and nothing
-- else of the host (no /home, /root, /run, /work...). No daemon, no account, no root needed.
--
--   local backend = require("runbox.sandbox").get("local")
--   local sb <close> = assert(backend.create{root = run_dir .. "/sandbox", timeout = 3600})
--   local p <close> = assert(sb:exec({"bash", "-lc", "make test"}, {cwd = "/app/repo"}))
--
-- On the host a sandbox is a folder `root` holding app/ (bound at the workdir, /app), tmp/ (/tmp),
-- home/ (/root, $HOME) and sandbox.json (its state: id, tags, limits, running/expired/terminated).
-- A small file per live sandbox in a registry folder lets another runbox process find it by its
-- tags and terminate it after this one was killed; its running execs are found in /proc (the
-- bwrap processes that bind its folder), so nothing is written per exec.
local proc = require "runbox.proc"
local sched = require "runbox.sched"
local fs = require "runbox.fs"
local json = require "runbox.json"
local util = require "runbox.util"
local errors = require "runbox.errors"
local checks = require "runbox.sandbox.checks"

local M = {name = "local"}

M.PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
M.HOME = "/root"          -- $HOME inside, backed by root/home
M.HOSTNAME = "sandbox"

-- Host top-level folders shown read-only inside (when they exist). Everything else at the top of
-- the host (/home, /root, /run, /tmp, /srv, /mnt, /media, a project folder such as /work) is absent.
M.SYSTEM = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt", "var", "sys",
            "nix", "gnu", "snap"}
-- Paths in those folders that only root can read, hidden when runbox runs as root (files shown
-- empty, folders as an empty tmpfs). /var/tmp is always replaced: it is shared scratch space.
local ROOT_SECRETS = {"/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
                      "/etc/sudoers.d", "/etc/security/opasswd", "/etc/ssl/private", "/var/lib/docker",
                      "/var/lib/containerd", "/var/lib/postgresql", "/var/lib/mysql", "/var/mail",
                      "/var/spool/cron", "/var/log"}

local SIGKILL = 9
local EMPTY = {}   -- stands for the sandbox's empty file in a command line being built
local CHUNK = 256 * 1024

local Sandbox = {}
Sandbox.__index = Sandbox

local live = setmetatable({}, {__mode = "v"})   -- id -> sandbox object of this process

local function fail(message, fields)
  return nil, errors.new("sandbox", message, fields)
end

local function lazy_tar() return require "runbox.tar" end   -- loads libarchive on first use

---------------------------------------------------------------------------------------------------
-- host facts

local uid_cache
local function my_uid()
  if not uid_cache then
    local status = fs.read("/proc/self/status") or ""
    uid_cache = tonumber(status:match("\nUid:%s+(%d+)")) or 0
  end
  return uid_cache
end

-- {state=, comm=, start=} from /proc/PID/stat, or nil when there is no such process.
local function proc_stat(pid)
  local s = fs.read("/proc/" .. math.tointeger(pid) .. "/stat")
  if not s then return nil end
  local comm, rest = s:match("^%d+ %((.*)%) (.*)$")   -- comm may hold spaces and ')'
  if not rest then return nil end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return {state = f[1], comm = comm, start = f[20]}
end

-- True while the process recorded as {pid=, start=, comm=} still runs: same pid, same start time
-- (so a recycled pid is not mistaken for it), not a zombie.
local function rec_alive(rec)
  if type(rec) ~= "table" or math.type(rec.pid) ~= "integer" or rec.pid <= 1 then return false end
  local st = proc_stat(rec.pid)
  if not st or st.state == "Z" or st.start ~= rec.start then return false end
  return rec.comm == nil or st.comm == rec.comm
end

-- This process as an owner record; read once per process (a fork would have another pid).
local own_rec
local function self_rec()
  local pid = util.pid()
  if not own_rec or own_rec.pid ~= pid then
    local st = proc_stat(pid)
    own_rec = {pid = pid, start = st and st.start, comm = st and st.comm}
  end
  return {pid = own_rec.pid, start = own_rec.start, comm = own_rec.comm}
end

local function find_bwrap()
  local env = os.getenv("RUNBOX_BWRAP")
  if env and env ~= "" then return env end
  for dir in ((os.getenv("PATH") or "") .. ":" .. M.PATH):gmatch("[^:]+") do
    local st = fs.stat(dir .. "/bwrap")
    if st and st.type == "file" then return dir .. "/bwrap" end
  end
end

local clean_path = checks.clean_path

local function under(path, dir)
  return path == dir or dir == "/" or path:sub(1, #dir + 1) == dir .. "/"
end

---------------------------------------------------------------------------------------------------
-- JSON files: state and registry (written to a temp name then renamed: never torn; no fsync,
-- since they are advice that every reader double-checks against /proc). A file that did not
-- exist before (fresh) is written in place: a reader that meets it half written skips it, as it
-- would have skipped the file a moment earlier.

local function write_json(path, value, fresh)
  if fresh then return fs.write(path, json.pretty(value)) end
  local tmp = ("%s.tmp-%d"):format(path, util.pid())
  local ok, err = fs.write(tmp, json.pretty(value))
  if not ok then return nil, err end
  ok, err = fs.rename(tmp, path)
  if not ok then fs.remove(tmp); return nil, err end
  return true
end

-- The registry folder: opts.registry, $RUNBOX_SANDBOX_REGISTRY, $XDG_RUNTIME_DIR/runbox/sandboxes,
-- else /tmp/runbox-UID/sandboxes.
function M.registry_dir(opts)
  local dir = opts and opts.registry or os.getenv("RUNBOX_SANDBOX_REGISTRY")
  if dir and dir ~= "" then return dir end
  local xdg = os.getenv("XDG_RUNTIME_DIR")
  local st = xdg and xdg ~= "" and fs.stat(xdg)
  if st and st.type == "dir" then return xdg .. "/runbox/sandboxes" end
  return ("/tmp/runbox-%d/sandboxes"):format(my_uid())
end

-- Makes the registry folder. It and its parent must not be symlinks nor writable by others (unless
-- sticky, like /tmp): /tmp/runbox-UID could have been prepared by another user.
-- Folders already checked by this process (a batch creates hundreds of sandboxes); registry_empty
-- checks again when the folder went away meanwhile.
local registry_checked = {}

local function ensure_registry(dir)
  if registry_checked[dir] then return true end
  local ok, err = fs.mkdir_p(dir, "700")
  if not ok then return fail(("cannot make the sandbox registry folder: %s"):format(err.message)) end
  for _, d in ipairs{dir, dir:match("^(.+)/[^/]+$")} do
    local st = fs.lstat(d)
    if st and (st.type ~= "dir" or (st.mode & 18 ~= 0 and st.mode & 512 == 0)) then
      return fail(("the sandbox registry folder '%s' is a symlink or writable by others: remove it, "
                   .. "or choose another with RUNBOX_SANDBOX_REGISTRY"):format(d))
    end
  end
  registry_checked[dir] = true
  return true
end

-- The registry folder's empty regular file, shown in place of host secrets (/dev/null would be
-- unusable: nodev); one for every sandbox, in a folder only this user can write. Returns its path.
local function registry_empty(dir, again)
  local ok, err = ensure_registry(dir)
  if not ok then return nil, err end
  local empty = dir .. "/empty"
  if fs.exists(empty) then return empty end
  ok, err = fs.write(empty, "")
  if ok then return empty end
  if again then return fail(("cannot write the sandbox registry folder: %s"):format(err.message)) end
  registry_checked[dir] = nil        -- the folder went away since it was checked: once more
  return registry_empty(dir, true)
end

local function entry_path(dir, id) return dir .. "/" .. id .. ".json" end

---------------------------------------------------------------------------------------------------
-- option checks (bad option types are programming errors: they raise)

local check_tags, check_env = checks.tags, checks.env

---------------------------------------------------------------------------------------------------
-- the bwrap command line (everything but --chdir and the command)

local function add(args, ...)
  for i = 1, select("#", ...) do args[#args + 1] = select(i, ...) end
end

-- A user bind: binds = {["/inside"] = "/host/path" | {host = "/host/path", rw = true}}.
local function parse_binds(binds)
  local out = {}
  if binds == nil then return out end
  if type(binds) ~= "table" then error("local.create: binds must be a table {[\"/inside\"] = \"/host/path\"}", 3) end
  for inside, spec in pairs(binds) do
    local host, rw = spec, false
    if type(spec) == "table" then host, rw = spec.host, spec.rw and true or false end
    local target, why = clean_path(inside)
    if not target or target == "/" then
      error(("local.create: binds key '%s' %s"):format(tostring(inside), why or "is the root"), 3)
    end
    if type(host) ~= "string" or host:sub(1, 1) ~= "/" then
      error(("local.create: binds[\"%s\"] must be an absolute host path"):format(target), 3)
    end
    out[#out + 1] = {inside = target, host = host, rw = rw}
  end
  table.sort(out, function(a, b) return a.inside < b.inside end)
  return out
end

local function top(path) return path:match("^/([^/]+)") end

-- Hides the host paths in list that exist in a shown folder: a folder under an empty tmpfs, a
-- file behind the sandbox's empty file. Appends to args (with EMPTY standing for that file).
local function hide_paths(args, list, system)
  for _, d in ipairs(list) do
    local path = clean_path(d)
    local st = path and path ~= "/" and system[top(path) or ""] and fs.lstat(path)
    if st and st.type == "dir" then
      add(args, "--tmpfs", path)
    elseif st and st.type ~= "link" then
      add(args, "--ro-bind", EMPTY, path)
    end
  end
end

-- The part of the command line that shows the host's system: the same for every sandbox of this
-- process, so it is worked out once. Returns args, system (set of shown top-level names).
local host_view
local function host_args()
  if host_view then return host_view.args, host_view.system end
  local args, system = {}, {}
  for _, name in ipairs(M.SYSTEM) do
    local path = "/" .. name
    local st = fs.lstat(path)
    if st and st.type == "link" then
      add(args, "--symlink", assert(fs.readlink(path)), path)
    elseif st and st.type == "dir" then
      add(args, "--ro-bind", path, path)
      system[name] = true
    end
  end
  add(args, "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run", "--dir", "/home")
  -- /etc/resolv.conf may point into /run (systemd-resolved), which is not shown
  local resolv = fs.realpath("/etc/resolv.conf")
  if resolv and resolv ~= "/etc/resolv.conf" and not system[top(resolv) or ""] then
    add(args, "--ro-bind", resolv, resolv)
  end
  local hide = {"/var/tmp"}
  if my_uid() == 0 then
    for _, p in ipairs(ROOT_SECRETS) do hide[#hide + 1] = p end
    for _, name in ipairs(fs.list("/etc/ssh") or {}) do
      if name:match("^ssh_host_.*_key$") then hide[#hide + 1] = "/etc/ssh/" .. name end
    end
  end
  hide_paths(args, hide, system)
  host_view = {args = args, system = system}
  return args, system
end

-- Builds sb._args and sb._writable (the read-write folders that map to host folders).
local function build_args(sb, o)
  local args = {"--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", M.HOSTNAME}
  if not sb.network then add(args, "--unshare-net") end
  local shown, system = host_args()
  for _, a in ipairs(shown) do args[#args + 1] = a end
  -- the user's home is absent anyway, unless it lies in a system folder (/var/lib/jenkins...)
  local hide = {os.getenv("HOME")}
  for _, d in ipairs(o.hide or {}) do hide[#hide + 1] = d end
  hide_paths(args, hide, system)
  for i, a in ipairs(args) do
    if a == EMPTY then args[i] = sb._empty end
  end
  sb._writable = {
    {inside = sb.workdir, host = sb.root .. "/app"},
    {inside = "/tmp", host = sb.root .. "/tmp"},
    {inside = sb.home, host = sb.root .. "/home"},
  }
  for _, w in ipairs(sb._writable) do add(args, "--bind", w.host, w.inside) end
  for _, b in ipairs(sb._binds) do
    add(args, b.rw and "--bind" or "--ro-bind", b.host, b.inside)
    if b.rw then sb._writable[#sb._writable + 1] = {inside = b.inside, host = b.host} end
  end
  add(args, "--remount-ro", "/")
  table.sort(sb._writable, function(a, b) return #a.inside > #b.inside end)
  sb._args = args
end

-- Checks once per process (and network setting) that bwrap can make a sandbox here, so a host
-- without user namespaces gives one clear error at create instead of a failure in every exec.
local probed = {}
local function probe(sb)
  local key = tostring(sb.network)
  if probed[key] then return true end
  local cmd = {M.bwrap}
  for _, a in ipairs(sb._args) do cmd[#cmd + 1] = a end
  add(cmd, "--chdir", "/", "--", "true")
  cmd.clear_env, cmd.env, cmd.timeout = true, {PATH = M.PATH}, 30
  local r, err = proc.run(cmd)
  if not r then return fail(("cannot run bwrap (%s): %s"):format(M.bwrap, err.message)) end
  if r.code ~= 0 then
    local why = (r.stderr:gsub("%s+$", "")):gsub("\n", "; ")
    local hint = ""
    if why:find("namespace") or why:find("ermission") or why:find("not permitted") then
      hint = ". bwrap needs unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1"
             .. " (older Debian), and on Ubuntu 23.10+ an AppArmor profile for bwrap"
             .. " (or sysctl kernel.apparmor_restrict_unprivileged_userns=0)"
    end
    return fail(("bwrap cannot create the sandbox: %s%s"):format(why, hint))
  end
  probed[key] = true
  return true
end

---------------------------------------------------------------------------------------------------
-- state

local function state_of(sb)
  return {id = sb.id, backend = M.name, root = sb.root, workdir = sb.workdir, home = sb.home,
          tags = sb.tags, network = sb.network, timeout = sb.timeout, created_at = sb.created_at,
          deadline_at = sb.timeout and sb.created_at + sb.timeout or nil, state = sb.state,
          expired = sb.expired or nil, reason = sb.reason, terminated_at = sb.terminated_at,
          owner = sb._owner}
end

function Sandbox:_save(fresh)
  if self._removed then return true end
  local path = self.root .. "/sandbox.json"
  local ok, err = write_json(path, state_of(self), fresh)
  if not ok then return nil, err end
  -- exec reads the file again only when it changed: not for this process's own write
  local st = fs.stat(path)
  self._state_stamp = st and (st.mtime .. ":" .. st.size)
  return true
end

---------------------------------------------------------------------------------------------------
-- finding running execs: bwrap processes whose command line binds ROOT/app

-- The command line of a bwrap process. Right after its start it may still read empty (the exec
-- is being completed), so an empty one is read again a few times.
local function bwrap_cmdline(pid)
  for _ = 1, 50 do
    local cmdline = fs.read("/proc/" .. pid .. "/cmdline")
    if cmdline ~= "" then return cmdline end
    local st = proc_stat(pid)
    if not st or st.state == "Z" or not sched.current() then return nil end
    sched.sleep(0.002)
  end
end

-- The host folder of the sandbox a bwrap command line belongs to: ROOT of its first
-- "--bind ROOT/app WORKDIR".
local function root_of(cmdline)
  local prev
  for arg in cmdline:gmatch("([^%z]*)%z") do
    if arg == "--" then return nil end
    if prev == "--bind" then return arg:sub(-4) == "/app" and arg:sub(1, -5) or nil end
    prev = arg
  end
end

-- root -> {pid...} of the bwrap processes (each exec's, and the sandbox's pid 1) of every
-- sandbox running on this host for this user.
local function running_pids()
  local out = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:match("^%d+$") and fs.read("/proc/" .. name .. "/comm") == "bwrap\n" then
      local st = proc_stat(tonumber(name))
      local cmdline = st and st.state ~= "Z" and bwrap_cmdline(name)
      local root = cmdline and root_of(cmdline)
      if root then
        out[root] = out[root] or {}
        table.insert(out[root], tonumber(name))
      end
    end
  end
  return out
end

---------------------------------------------------------------------------------------------------
-- create

local function validate_workdir(workdir)
  local path, why = clean_path(workdir)
  if not path then return fail(("local.create: workdir '%s' %s"):format(tostring(workdir), why)) end
  local t = top(path)
  for _, name in ipairs(M.SYSTEM) do
    if t == name then
      return fail(("local.create: workdir '%s' is inside the host's read-only /%s; choose a folder such as /app")
                  :format(path, name))
    end
  end
  for _, name in ipairs{"proc", "dev", "tmp", "root"} do
    if t == name or path == "/" then
      return fail(("local.create: workdir '%s' cannot be used (it is /, or lies in /%s); choose a folder such as /app")
                  :format(path, t or ""))
    end
  end
  return path
end

-- Creates a sandbox. opts: root (host folder; default a new temp folder removed at terminate),
-- workdir ("/app"), env and secrets (tables of variables for every exec), timeout (seconds for
-- the whole sandbox), network (true), tags (table of strings), binds, hide (extra host paths to
-- hide), registry. image, cpu, memory and volumes (other backends') are ignored: the local
-- sandbox runs the host's system without resource limits. Returns the sandbox or nil, err.
function M.create(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("local.create: opts must be a table", 2) end
  local tags = check_tags(opts.tags, "local.create")
  local env = {}
  for k, v in pairs(check_env(opts.env, "local.create")) do env[k] = v end
  for k, v in pairs(check_env(opts.secrets, "local.create")) do env[k] = v end   -- env by another name
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error("local.create: timeout must be a positive number of seconds", 2)
  end
  if opts.network ~= nil and type(opts.network) ~= "boolean" then error("local.create: network must be a boolean", 2) end
  if opts.root ~= nil and (type(opts.root) ~= "string" or opts.root == "") then
    error("local.create: root must be a folder path", 2)
  end
  if opts.hide ~= nil and type(opts.hide) ~= "table" then error("local.create: hide must be a list of host paths", 2) end
  local binds = parse_binds(opts.binds)
  local workdir, werr = validate_workdir(opts.workdir or "/app")
  if not workdir then return nil, werr end

  M.bwrap = M.bwrap or find_bwrap()
  if not M.bwrap then
    return fail("bwrap (bubblewrap) was not found on PATH: install it (Debian/Ubuntu: apt-get install bubblewrap)")
  end
  for _, b in ipairs(binds) do
    if not fs.exists(b.host) then
      return fail(("local.create: binds[\"%s\"]: the host path '%s' does not exist"):format(b.inside, b.host))
    end
  end

  local root, remove_root = opts.root, false
  if not root then
    local err
    root, err = fs.temp_dir("runbox-sandbox")
    if not root then return nil, err end
    remove_root = true
  end
  local ok, err = fs.mkdir_p(root)
  if not ok then return fail(("cannot make the sandbox folder (root): %s"):format(err.message)) end
  root = assert(fs.realpath(root))
  -- a root still used by a running sandbox (a retry reusing a run folder too early) is refused
  local prev_state = json.decode_file(root .. "/sandbox.json")
  if type(prev_state) == "table" and prev_state.state ~= "terminated" and running_pids()[root] then
    return fail(("the sandbox folder '%s' is in use by sandbox %s, which is still running: terminate it first")
                :format(root, type(prev_state) == "table" and tostring(prev_state.id) or "?"))
  end
  for _, sub in ipairs{"app", "tmp", "home"} do
    ok, err = fs.mkdir_p(root .. "/" .. sub)
    if not ok then return fail(("cannot make the sandbox folder: %s"):format(err.message)) end
    local st = fs.lstat(root .. "/" .. sub)
    if st.type ~= "dir" then return fail(("sandbox folder '%s/%s' is not a folder"):format(root, sub)) end
  end
  fs.chmod(root .. "/tmp", "700")
  fs.chmod(root .. "/home", "700")
  local registry = M.registry_dir(opts)
  local empty
  empty, err = registry_empty(registry)
  if not empty then
    if remove_root then fs.remove_tree(root) end
    return nil, err
  end

  local sb = setmetatable({
    id = "local-" .. util.random_hex(16), backend = M.name, root = root, workdir = workdir,
    home = M.HOME, tags = tags, env = env, network = opts.network ~= false, timeout = opts.timeout,
    created_at = util.time(), state = "running",
    _deadline = opts.timeout and sched.now() + opts.timeout,
    _execs = setmetatable({}, {__mode = "k"}), _binds = binds,
    _remove_root = remove_root, _owner = self_rec(), _empty = empty, _made = {},
  }, Sandbox)
  build_args(sb, opts)

  local function undo(e)
    if remove_root then fs.remove_tree(root) end
    return nil, e
  end
  ok, err = probe(sb)
  if not ok then return undo(err) end
  ok, err = sb:_save(prev_state == nil)
  if not ok then return undo(errors.new("sandbox", "cannot write the sandbox state: " .. err.message)) end
  -- a root reused after its sandbox died: that sandbox's stale registry entry goes
  if type(prev_state) == "table" and type(prev_state.id) == "string" and prev_state.id:match("^[%w][%w._-]*$") then
    fs.remove(entry_path(registry, prev_state.id))
  end
  sb._entry = entry_path(registry, sb.id)
  ok, err = write_json(sb._entry, {id = sb.id, backend = M.name, root = root, tags = tags,
                                   created_at = sb.created_at, owner = sb._owner}, true)
  if not ok then return undo(errors.new("sandbox", "cannot register the sandbox: " .. err.message)) end
  live[sb.id] = sb
  return sb
end

-- Sends SIGKILL to process groups.
local function kill_groups(pgids)
  for _, g in ipairs(pgids) do proc.kill_pid(-tonumber(g), SIGKILL) end
end

-- Kills bwrap processes with their process groups and the groups of their children: each
-- exec's bwrap leads its own group, and its child is the sandbox's pid 1 (in its own session),
-- whose death ends every process of the PID namespace. The child dies with bwrap anyway
-- (--die-with-parent), except in the instant between its creation and its prctl call.
local function kill_bwraps(pids)
  local groups = {}
  for _, pid in ipairs(pids) do
    groups[#groups + 1] = pid
    local kids = fs.read(("/proc/%d/task/%d/children"):format(pid, pid)) or ""
    for kid in kids:gmatch("%d+") do groups[#groups + 1] = kid end
  end
  kill_groups(groups)
end

---------------------------------------------------------------------------------------------------
-- exec

local function timeout_error(sb)
  return errors.new("timeout", ("sandbox %s reached its time limit of %gs (create{timeout=}): it runs nothing more")
                    :format(sb.id, sb.timeout), {sandbox = sb.id})
end

-- Marks the sandbox expired (its time limit passed): later execs are refused. Running ones need no
-- help: each got at most the time left as its own timeout, so they end then too, as "timeout".
function Sandbox:_expire()
  if self.expired then return end
  self.expired = true
  if self.state == "running" then self.state, self.reason = "expired", "time limit" end
  self:_save()
end

-- Host folder for a path inside, the writable folder it is in and the rest of the path; or nil,
-- err naming the path and the folders that would do.
local function map_path(self, inside)
  local path, why = clean_path(inside)
  if not path then return fail(("sandbox path '%s' %s"):format(tostring(inside), why)) end
  for _, w in ipairs(self._writable) do
    if under(path, w.inside) then
      local rel = path:sub(#w.inside + 2)
      return w.host .. (rel ~= "" and "/" .. rel or ""), w, rel
    end
  end
  local names = {}
  for _, w in ipairs(self._writable) do names[#names + 1] = w.inside end
  table.sort(names)
  return fail(("sandbox path '%s' is outside the sandbox's writable folders (%s)")
              :format(path, table.concat(names, ", ")))
end

-- The host path of a path in the writable folders (/app/x -> ROOT/app/x), or nil, err.
function Sandbox:host_path(inside)
  local host, err = map_path(self, inside)
  if not host then return nil, err end
  return host
end

-- Like host_path, but refuses a path that goes through a symlink: such a link was made inside the
-- sandbox, and the host must not follow it (it could point at any host file).
function Sandbox:_safe_host_path(inside, what)
  local host, w, rel = map_path(self, inside)
  if not host then return nil, w end
  -- a folder this process made since the last exec started is no link while no command runs
  local parent = host:match("^(.*)/[^/]*$")
  if self._made[parent] and not self:_busy() then
    local st = fs.lstat(host)
    if not (st and st.type == "link") then return host end
  end
  local cur = w.host
  for c in rel:gmatch("[^/]+") do
    cur = cur .. "/" .. c
    local st = fs.lstat(cur)
    if not st then break end
    if st.type == "link" then
      return fail(("%s: '%s' goes through a symlink made inside the sandbox ('%s'); runbox does not follow it")
                  :format(what, inside, w.inside .. cur:sub(#w.host + 1)))
    end
  end
  return host
end

-- False when cwd is in a writable folder and surely is no folder there. Symlinks made inside are
-- not followed on the host (they mean something else there): bwrap decides about those.
function Sandbox:_cwd_ok(cwd)
  local host, w, rel = map_path(self, cwd)
  if not host then return true end
  local cur = w.host
  for c in rel:gmatch("[^/]+") do
    cur = cur .. "/" .. c
    local st = fs.lstat(cur)
    if not st then return false end
    if st.type == "link" then return true end
    if st.type ~= "dir" then return false end
  end
  return true
end

local function exec_env(sb, env)
  return checks.merged_env({PATH = M.PATH, HOME = sb.home, LANG = "C.UTF-8", TERM = "dumb"}, sb.env, env)
end

-- Runs argv inside the sandbox. opts: cwd (default the workdir), env, stdin (a string to feed, or
-- "pipe"), stdout, stderr, timeout (seconds), kill_grace. Returns a runbox.proc process or nil, err.
function Sandbox:exec(argv, opts)
  local env
  opts, env = checks.exec_args(argv, opts)
  if self.state ~= "terminated" then
    -- terminate_id from another runbox process marks the state file: this one then stops too.
    -- It is read again only when it changed (a stat per exec, not a read and a decode).
    local path = self.root .. "/sandbox.json"
    local fst = fs.stat(path)
    local stamp = fst and (fst.mtime .. ":" .. fst.size)
    if stamp ~= self._state_stamp then
      self._state_stamp = stamp
      local st = json.decode_file(path)
      if type(st) == "table" and st.id == self.id and st.state == "terminated" then
        self.state, self.reason = "terminated", st.reason
        if self._entry then fs.remove(self._entry) end
      end
    end
  end
  if self.state == "terminated" then
    return fail(("sandbox %s was terminated: create a new one"):format(self.id), {sandbox = self.id})
  end
  local remaining
  if self._deadline then
    remaining = self._deadline - sched.now()
    if remaining <= 0 or self.expired then
      self:_expire()
      return nil, timeout_error(self)
    end
  end
  local cwd, why = clean_path(opts.cwd or self.workdir)
  if not cwd then return fail(("sb:exec: cwd '%s' %s"):format(tostring(opts.cwd), why)) end
  if not self:_cwd_ok(cwd) then
    return fail(("sb:exec: cwd '%s' is not a folder in sandbox %s"):format(cwd, self.id))
  end

  local timeout = opts.timeout
  if remaining and (not timeout or remaining < timeout) then timeout = remaining end
  local n = #self._args
  local cmd = table.move(self._args, 1, n, 2, {M.bwrap})
  cmd[n + 2], cmd[n + 3], cmd[n + 4] = "--chdir", cwd, "--"
  table.move(argv, 1, #argv, n + 5, cmd)
  -- bwrap hands its own environment to the command: secrets travel there, never in argv
  cmd.clear_env, cmd.env = true, exec_env(self, env)
  cmd.cwd = self.root
  cmd.stdin, cmd.stdout, cmd.stderr = opts.stdin, opts.stdout, opts.stderr
  cmd.timeout, cmd.kill_grace = timeout, opts.kill_grace
  self._made = {}
  local p, err = proc.spawn(cmd)
  if not p then return fail(("sandbox %s: cannot start bwrap: %s"):format(self.id, err.message)) end

  -- nothing is written per exec: list and terminate_id find running execs in /proc
  self._execs[p] = true
  return p
end

---------------------------------------------------------------------------------------------------
-- files in and out (on the host side: the writable folders are host folders)

local function tar_opts(opts, defaults)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

function Sandbox:_busy()
  for p in pairs(self._execs) do
    if p:running() then return true end
  end
  return false
end

local function writable_dir(sb, dest, what)
  if sb.state == "terminated" then
    return fail(("%s: sandbox %s was terminated"):format(what, sb.id))
  end
  local host, err = sb:_safe_host_path(dest, what)
  if not host then return nil, err end
  -- a folder made since the last exec started still exists when no command runs (only a
  -- command inside could remove it)
  if sb._made[host] and not sb:_busy() then return host end
  local ok, merr = fs.mkdir_p(host)
  if not ok then return fail(("%s: cannot make '%s': %s"):format(what, dest, merr.message)) end
  sb._made[host] = true
  return host
end

local function with_context(what, err)
  if errors.is(err) then err.message = what .. ": " .. err.message end
  return nil, err
end

-- Writes data to the file path inside the sandbox (parents made as needed; an existing file is
-- replaced). Written from the host: a symlink left at the file's own path is replaced, and a
-- folder on the way that is a symlink made inside the sandbox is refused (never followed).
function Sandbox:write_file(path, data, opts)
  if type(path) ~= "string" then error("sb:write_file: path must be a string", 2) end
  if type(data) ~= "string" then error("sb:write_file: data must be a string", 2) end
  if self.state == "terminated" then return fail(("write_file: sandbox %s was terminated"):format(self.id)) end
  local dir, name = path:match("^(.*)/([^/]+)$")
  if not name or name == "." or name == ".." then return fail(("write_file: '%s' does not name a file"):format(path)) end
  local hdir, err = writable_dir(self, dir ~= "" and dir or "/", "write_file")
  if not hdir then return nil, err end
  local host = hdir .. "/" .. name
  local st = fs.lstat(host)
  if st and st.type == "link" then fs.remove(host)
  elseif st and st.type ~= "file" then return fail(("write_file: '%s' is a %s in sandbox %s"):format(path, st.type, self.id)) end
  local ok, werr = fs.write(host, data)
  if not ok then return with_context(("write_file '%s'"):format(path), werr) end
  if opts and opts.mode then fs.chmod(host, opts.mode) end
  return true
end

-- Unpacks a tar archive (a file path or the archive bytes) into the folder dest inside the sandbox.
-- opts go to tar.unpack (symlinks pointing outside are kept: they mean something inside).
function Sandbox:put_tar(src, dest, opts)
  if type(src) ~= "string" then error("sb:put_tar: src must be an archive path or archive bytes", 2) end
  local host, err = writable_dir(self, dest or self.workdir, "put_tar")
  if not host then return nil, err end
  local ok, terr = lazy_tar().unpack(src, host, tar_opts(opts, {outside_links = "keep"}))
  if not ok then return with_context(("put_tar into '%s'"):format(dest or self.workdir), terr) end
  return true
end

-- Copies the contents of the host folder local_dir into dest inside the sandbox.
-- opts.exclude: glob patterns to leave out.
function Sandbox:put_dir(local_dir, dest, opts)
  if type(local_dir) ~= "string" then error("sb:put_dir: local_dir must be a folder path", 2) end
  local st = fs.stat(local_dir)
  if not st or st.type ~= "dir" then return fail(("put_dir: '%s' is not a folder"):format(local_dir)) end
  local host, err = writable_dir(self, dest or self.workdir, "put_dir")
  if not host then return nil, err end
  local tar = lazy_tar()
  local pk <close>, perr = tar.packer(local_dir, {compression = "none", exclude = opts and opts.exclude})
  if not pk then return with_context("put_dir", perr) end
  local ok, terr = tar.unpack_from(function() return pk:read(CHUNK) end, host, {outside_links = "keep"})
  if not ok then return with_context(("put_dir into '%s'"):format(dest or self.workdir), terr) end
  return true
end

-- A small tree of plain files and folders (artifacts: a diff, a status, a few outputs) is copied
-- file by file, without an archive in between. Returns true, or nil (not small and plain: use
-- the archive path, which also handles links and limits), or nil, err.
local SMALL_TREE = 64
local function copy_small_tree(host, local_dir)
  local entries = fs.walk(host)
  if not entries or #entries > SMALL_TREE then return nil end
  for _, e in ipairs(entries) do
    if e.type ~= "file" and e.type ~= "dir" then return nil end
  end
  local ok, err = fs.mkdir_p(local_dir)
  if not ok then return nil, err end
  for _, e in ipairs(entries) do
    local to = local_dir .. "/" .. e.path
    if e.type == "dir" then ok, err = fs.mkdir_p(to)
    else
      -- never through a link swapped in since the walk, never a host file's content
      if fs.lstat(to) then fs.remove(to) end
      ok, err = fs.copy_file(host .. "/" .. e.path, to, {nofollow = true})
    end
    if not ok then return nil, err end
  end
  return true
end

-- Copies src (a folder or a file inside the sandbox) out: unpacked safely into the host folder
-- local_dir (a folder's contents; a file under its name), or, without local_dir, returned as a
-- tar archive string. opts: exclude, compression (for the string), outside_links ("skip").
function Sandbox:get_tar(src, local_dir, opts)
  if local_dir ~= nil and type(local_dir) ~= "string" then error("sb:get_tar: local_dir must be a folder path", 2) end
  opts = opts or {}
  local host, err = self:_safe_host_path(src, "get_tar")
  if not host then return nil, err end
  local st = fs.lstat(host)
  if not st then return fail(("get_tar: '%s' does not exist in sandbox %s"):format(src, self.id)) end
  local dir, files = host, nil
  if st.type == "file" then
    dir, files = host:match("^(.*)/([^/]+)$")
    files = {files}
  elseif st.type ~= "dir" then
    return fail(("get_tar: '%s' is neither a folder nor a file"):format(src))
  end
  if local_dir and not files and not (opts.exclude or opts.max_bytes or opts.max_entries or opts.outside_links) then
    local copied, cerr = copy_small_tree(host, local_dir)
    if copied then return true end
    if cerr then return with_context(("get_tar of '%s'"):format(src), cerr) end
  end
  local tar = lazy_tar()
  if not local_dir then
    local data, perr = tar.pack(dir, {files = files, exclude = opts.exclude, compression = opts.compression})
    if not data then return with_context("get_tar", perr) end
    return data
  end
  local pk <close>, perr = tar.packer(dir, {files = files, exclude = opts.exclude, compression = "none"})
  if not pk then return with_context("get_tar", perr) end
  local ok, terr = tar.unpack_from(function() return pk:read(CHUNK) end, local_dir,
                                   {outside_links = opts.outside_links or "skip",
                                    max_bytes = opts.max_bytes, max_entries = opts.max_entries})
  if not ok then return with_context(("get_tar of '%s'"):format(src), terr) end
  return true
end

---------------------------------------------------------------------------------------------------
-- terminate

-- Kills every running exec (their process groups; the PID namespace takes the rest), marks the
-- state terminated (opts.reason says why) and leaves the registry. Files stay unless opts.remove
-- (or the root was a temp folder made by create). Idempotent; also the <close> handler.
function Sandbox:terminate(opts)
  local remove = (opts and opts.remove) or self._remove_root
  if self.state ~= "terminated" then
    if self._deadline and sched.now() >= self._deadline and not self.expired then
      self.expired, self.reason = true, "time limit"
    end
    self.state = "terminated"
    self.reason = self.reason or (opts and opts.reason) or "terminated"
    self.terminated_at = util.time()
    local running, pids = {}, {}
    for p in pairs(self._execs) do
      if p:running() then running[#running + 1], pids[#pids + 1] = p, p.pid end
    end
    kill_bwraps(pids)
    for _, p in ipairs(running) do p:kill(SIGKILL) end
    for _, p in ipairs(running) do pcall(p.wait, p, 10) end
    self:_save()
    if self._entry then fs.remove(self._entry) end
    live[self.id] = nil
  end
  if remove and not self._removed then
    self._removed = true
    local ok, err = fs.remove_tree(self.root)
    if not ok then return nil, err end
  end
  return true
end

-- terminate{remove = true}: the sandbox's files go too.
function Sandbox:destroy() return self:terminate{remove = true} end

Sandbox.__close = function(sb) sb:terminate() end
Sandbox.__tostring = function(sb) return ("sandbox %s (local, %s)"):format(sb.id, sb.state) end

-- Running execs (their runbox.proc objects).
function Sandbox:running() return checks.running(self._execs) end

---------------------------------------------------------------------------------------------------
-- list and terminate_id: what the registry says, checked against /proc

local function read_entry(dir, name)
  local entry = json.decode_file(dir .. "/" .. name)
  if type(entry) ~= "table" or type(entry.id) ~= "string" or type(entry.root) ~= "string" then return nil end
  return entry
end

local function tags_match(have, want)
  for k, v in pairs(want) do
    if type(have) ~= "table" or have[k] ~= v then return false end
  end
  return true
end

-- The registry entry's state file, or nil when it now belongs to another sandbox (a root reused).
local function entry_state(entry)
  local state = json.decode_file(entry.root .. "/sandbox.json")
  if type(state) ~= "table" or state.id ~= entry.id then return nil end
  return state
end

local function describe(entry, scan)
  local state = entry_state(entry)
  local pids = state and scan[entry.root] or {}
  table.sort(pids)
  return {id = entry.id, backend = M.name, tags = entry.tags or {}, root = entry.root,
          created_at = entry.created_at, state = state and state.state or "unknown",
          alive = #pids > 0, pids = pids, owner_alive = rec_alive(entry.owner),
          expired = state and state.deadline_at ~= nil and util.time() > state.deadline_at or false}
end

-- The sandboxes in the registry (also those left by a runbox that was killed) whose tags include
-- opts.tags: {id=, tags=, root=, created_at=, state=, alive=, pids=, owner_alive=, expired=}, oldest
-- first. alive: one of its execs still runs; owner_alive: the runbox process that made it still runs.
function M.list(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("local.list: opts must be a table", 2) end
  local want = check_tags(opts.tags, "local.list")
  local dir = M.registry_dir(opts)
  local out, scan = {}, nil
  for _, name in ipairs(fs.list(dir) or {}) do
    if name:match("%.json$") then
      local entry = read_entry(dir, name)
      if entry and tags_match(entry.tags, want) then
        scan = scan or running_pids()
        out[#out + 1] = describe(entry, scan)
      end
    end
  end
  return checks.oldest_first(out)
end

-- Terminates a sandbox by id, from any runbox process: kills its running execs (the bwrap
-- processes binding its folder, found in /proc), marks its state terminated, removes its registry
-- entry. Returns true, or nil, err (code "not_found") when the registry has no such sandbox.
function M.terminate_id(id, opts)
  checks.sandbox_id(id, "local.terminate_id", "local-0123abcd")
  local mine = live[id]
  if mine then return mine:terminate() end
  local dir = M.registry_dir(opts)
  local entry = read_entry(dir, id .. ".json")
  if not entry then
    return nil, errors.new("not_found", ("no sandbox '%s' in the registry %s"):format(id, dir))
  end
  local state = entry_state(entry)
  if state then
    -- marked first: a live owner then refuses new execs once its running ones die
    if state.state ~= "terminated" then
      state.reason = rec_alive(entry.owner) and "terminate_id" or "terminate_id: its runbox process had ended"
      state.state, state.terminated_at = "terminated", util.time()
      write_json(entry.root .. "/sandbox.json", state)
    end
    for _ = 1, 500 do      -- they die at once; wait so the caller can rely on it (5 s at most)
      local pids = running_pids()[entry.root]
      if not pids then break end
      kill_bwraps(pids)
      sched.sleep(0.01)
    end
  end
  fs.remove(entry_path(dir, id))
  return true
end

return M
