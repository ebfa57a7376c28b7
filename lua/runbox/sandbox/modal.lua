-- The modal sandbox backend: the runbox sandbox interface (docs/api/sandbox.md) on Modal cloud
-- sandboxes, through runbox's own Modal client (runbox.modal).
--
--   local backend = require("runbox.sandbox").get("modal")
--   local sb <close> = assert(backend.create{timeout = 3600, tags = {batch = b, run = r},
--                                            artifacts = {volume = "codex-artifacts", run_id = r}})
--   local p <close> = assert(sb:exec({"bash", "-lc", "make test"}, {cwd = "/app/repo"}))
--
-- Modal runs commands, keeps their output and takes stdin; everything else is done with small
-- shell commands inside the sandbox: files travel as tar streams (`tar -x` fed on stdin, `tar -c`
-- read from stdout into runbox.tar's safe unpacking), and since Modal cannot signal one exec,
-- every exec runs under a wrapper that starts the command in its own session and listens on a
-- FIFO for a signal to send to it (p:kill writes the signal there from another exec).
-- /app/artifacts is a symlink into the artifacts volume at <run_id>/, so what a run writes there
-- is on the volume even if runbox dies (`runbox fetch` downloads it).
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local checks = require "runbox.sandbox.checks"
local log = require "runbox.log"
local fs = require "runbox.fs"
local util = require "runbox.util"

local M = {name = "modal", reaches_host = false}

M.DEFAULT_APP = "runbox"
M.WORKDIR = "/app"
M.DEFAULT_TIMEOUT = 3600        -- seconds, when create gets none (as the original runners)
M.TIMEOUT_MARGIN = 120          -- seconds Modal keeps the sandbox after its limit: files can still come out
M.MAX_TIMEOUT = 24 * 3600       -- Modal's limit
M.CREATE_RATE = 5               -- sandbox creations per second, for the whole process
M.KILL_GRACE = 10               -- seconds after an exec's timeout before runbox kills it itself
M.FILE_TIMEOUT = 900            -- seconds for one file transfer command
M.TERMINATE_WAIT = 30           -- seconds terminate waits for the end (the volume commit) with artifacts
M.CHUNK = 1024 * 1024           -- bytes per stdin write of an upload
M.EXEC_DIR = "/tmp/.runbox-execs"
M.ARTIFACTS_MOUNT = "/mnt/runbox-artifacts"
M.ARTIFACTS_PATH = "/app/artifacts"

-- What the original Modal runners installed (debian slim with Python 3.11, the apt packages,
-- Node.js 20 from NodeSource, a git identity, pytest and the model SDKs, the /app folders).
M.DEFAULT_IMAGE = {
  registry = "python:3.11-slim-bookworm",
  commands = {
    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y git curl build-essential"
      .. " python3 python3-pip tmux vim jq ca-certificates wget gnupg && rm -rf /var/lib/apt/lists/*",
    "RUN curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && DEBIAN_FRONTEND=noninteractive"
      .. " apt-get install -y nodejs && rm -rf /var/lib/apt/lists/* && node --version && npm --version",
    "RUN git config --global user.email agent@codex-coach.ai && git config --global user.name 'Codex Agent'"
      .. " && git config --global init.defaultBranch main",
    "RUN pip install --no-cache-dir pytest openai anthropic",
    "RUN mkdir -p /app/repo /app/artifacts /app/task /usr/local/lib/node_modules/@openai/",
  },
}

-- What to run when a named volume is missing.
M.VOLUME_HINTS = {["codex-installation"] = "run `runbox setup` to upload your local codex installation"}

local SIGNALS = {HUP = 1, INT = 2, QUIT = 3, KILL = 9, USR1 = 10, USR2 = 12, TERM = 15}

local Sandbox = {}
Sandbox.__index = Sandbox
local Proc = {}
Proc.__index = Proc

local live = setmetatable({}, {__mode = "v"})   -- id -> sandbox object of this process

local function fail(message, fields)
  return nil, errors.new("sandbox", message, fields)
end

-- A Modal client error as a sandbox error (its message kept, prefixed with what was done).
local function wrap(err, doing)
  if errors.is(err, "sandbox") or errors.is(err, "timeout") or errors.is(err, "cancelled") then return err end
  local msg = errors.message(err)
  if doing then msg = doing .. ": " .. msg end
  return errors.new("sandbox", msg, {reason = type(err) == "table" and err.reason or nil,
                                     grpc_status = type(err) == "table" and err.grpc_status or nil, cause = err})
end

local function lazy_tar() return require "runbox.tar" end

---------------------------------------------------------------------------------------------------
-- the shell scripts run inside (POSIX sh; they need sh, mkfifo, setsid, tar, readlink of the image)

-- Runs "$@" in a session of its own (so a signal reaches everything it starts), and sends it each
-- signal number written to the FIFO $EXEC_DIR/<id>. The listener holds the FIFO open read-write
-- before it says <id>.ready, so a signal written after that is never lost. When runbox's signal
-- killed the command, the wrapper dies of the same signal, so the exit status says "signal".
-- $2 = 1 merges stderr into stdout.
local WRAPPER = [[
d=]] .. M.EXEC_DIR .. [[; f=$d/$1; m=$2; shift 2
[ -d "$d" ] || mkdir -p "$d" 2>/dev/null
mkfifo -m 600 "$f" 2>/dev/null || f=
[ "$m" = 1 ] && exec 2>&1
exec 3<&0 0</dev/null
if command -v setsid >/dev/null 2>&1; then setsid "$@" <&3 3<&- & else "$@" <&3 3<&- & fi
pid=$!
exec 3<&-
w=
if [ -n "$f" ]; then
  (exec 4<>"$f" || exit 1; : >"$f.ready"
   while read -r s <&4; do echo "$s" >"$f.sent"; kill -"$s" "-$pid" 2>/dev/null || kill -"$s" "$pid" 2>/dev/null; done) </dev/null >/dev/null 2>&1 &
  w=$!
fi
wait "$pid"; rc=$?
[ -n "$w" ] && kill "$w" 2>/dev/null
s=
if [ -n "$f" ]; then [ -f "$f.sent" ] && read -r s <"$f.sent"; : >"$f.done"; rm -f "$f" "$f.sent" "$f.ready"; fi
if [ -n "$s" ] && [ "$rc" -gt 128 ]; then kill -"$s" $$; fi
exit "$rc"
]]

-- Writes signal $2 to the FIFO of exec $1 once its listener is ready (waiting a moment for a
-- wrapper still starting; an ended one left <id>.done). Opening the FIFO read-write never blocks,
-- so a wrapper that has just ended costs nothing.
local KILL = [[
f=]] .. M.EXEC_DIR .. [[/$1; i=0
while [ ! -e "$f.ready" ] && [ ! -e "$f.done" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -e "$f.ready" ] || [ ! -p "$f" ]; then
  [ -e "$f.done" ] && exit 0
  echo "runbox: the exec has no signal FIFO (is mkfifo missing in the image?)" >&2; exit 3
fi
exec 4<>"$f"; echo "$2" >&4
]]

-- Shared by the file scripts: check_dir DIR TOP ALLOW refuses (exit 45) a folder on the way to
-- DIR that is a symlink pointing outside TOP (the path's top folder) and outside ALLOW (the
-- run's artifacts folder), and a path part that is not a folder (exit 46).
local CHECK_DIR = [[
check_dir() {
  set -f; cur=; old=$IFS; IFS=/
  for c in ${1#/}; do
    [ -n "$c" ] || continue
    cur=$cur/$c
    if [ -L "$cur" ]; then
      t=$(readlink -f -- "$cur") || t=
      ok=
      case "$t/" in "$2/"*) ok=1;; esac
      if [ -n "$3" ]; then case "$t/" in "$3/"*) ok=1;; esac; fi
      if [ -z "$ok" ]; then echo "runbox: '$cur' is a symlink to '$t', outside $2: runbox does not follow it" >&2; exit 45; fi
    elif [ -e "$cur" ] && [ ! -d "$cur" ]; then
      echo "runbox: '$cur' is not a folder" >&2; exit 46
    fi
  done
  IFS=$old; set +f
}
]]

-- write_file: $1 path, $2 top, $3 allow, $4 mode; the data on stdin. A link at the file itself is
-- replaced (the data goes to a temp file renamed over it).
local WRITE = CHECK_DIR .. [[
f=$1; dir=${f%/*}; [ -n "$dir" ] || dir=/
check_dir "$dir" "$2" "$3"
mkdir -p -- "$dir" || exit 1
if [ -L "$f" ]; then rm -f -- "$f"; elif [ -d "$f" ]; then echo "runbox: '$f' is a folder" >&2; exit 46; fi
tmp=$dir/.runbox-write.$$
if cat >"$tmp" && { [ -z "$4" ] || chmod "$4" "$tmp"; } && mv -f -- "$tmp" "$f"; then exit 0; fi
rm -f -- "$tmp"; exit 1
]]

-- put_tar / put_dir: $1 dest, $2 top, $3 allow; an uncompressed tar archive on stdin.
local UNTAR = CHECK_DIR .. [[
check_dir "$1" "$2" "$3"
mkdir -p -- "$1" && cd -- "$1" && exec tar -x --no-same-owner -f -
]]

-- get_tar: $1 a folder (its contents) or a file (under its name), as a tar archive on stdout.
local TARC = [[
s=$1
if [ -d "$s" ]; then cd -- "$s" && exec tar -c -f - .
elif [ -e "$s" ] || [ -L "$s" ]; then d=${s%/*}; [ -n "$d" ] || d=/; cd -- "$d" && exec tar -c -f - -- "${s##*/}"
else echo "runbox: '$s' does not exist" >&2; exit 44; fi
]]

-- create: the FIFO folder, the workdir, and /app/artifacts as a link into the artifacts volume
-- ($3 the run's folder there, $4 the link; what the image put in the folder is moved over).
local SETUP = [[
mkdir -p -- "$1" "$2" || exit 1
[ -n "$3" ] || exit 0
mkdir -p -- "$3" || exit 1
if [ -d "$4" ] && [ ! -L "$4" ]; then cp -a "$4/." "$3/" 2>/dev/null; fi
rm -rf -- "$4" && mkdir -p -- "${4%/*}" && ln -s -- "$3" "$4"
]]

---------------------------------------------------------------------------------------------------
-- option checks (bad types are programming errors: they raise)

local clean_path, check_tags, check_env = checks.clean_path, checks.tags, checks.env

local function check_create(o)
  if type(o) ~= "table" then error("modal.create: opts must be a table", 3) end
  if o.timeout ~= nil and (type(o.timeout) ~= "number" or o.timeout <= 0) then
    error("modal.create: timeout must be a positive number of seconds", 3)
  end
  if o.network ~= nil and type(o.network) ~= "boolean" and type(o.network) ~= "table" then
    error("modal.create: network must be a boolean (or {cidrs =, domains =})", 3)
  end
  if o.image ~= nil and type(o.image) ~= "string" and type(o.image) ~= "table" then
    error("modal.create: image must be {registry =, commands = {...}}, a registry tag or an image id \"im-...\"", 3)
  end
  if o.cpu ~= nil and (type(o.cpu) ~= "number" or o.cpu <= 0) then error("modal.create: cpu must be a positive number", 3) end
  if o.memory ~= nil and (not math.tointeger(o.memory) or o.memory <= 0) then
    error("modal.create: memory must be a whole number of MiB", 3)
  end
  if o.app ~= nil and (type(o.app) ~= "string" or o.app == "") then error("modal.create: app must be an app name", 3) end
  if o.on_log ~= nil and type(o.on_log) ~= "function" then error("modal.create: on_log must be a function", 3) end
  if o.secrets ~= nil then
    if type(o.secrets) ~= "table" then error("modal.create: secrets must be a list of Modal secret names", 3) end
    for k, v in pairs(o.secrets) do
      if math.type(k) ~= "integer" or type(v) ~= "string" or v == "" then
        error("modal.create: secrets must be a list of Modal secret names (variables go in secret_env)", 3)
      end
    end
  end
  check_env(o.secret_env, "modal.create: secret_env")
  if o.volumes ~= nil then
    if type(o.volumes) ~= "table" then error("modal.create: volumes must be a table {[\"/path\"] = \"volume-name\"}", 3) end
    for path, v in pairs(o.volumes) do
      if not clean_path(path) or path == "/" then error(("modal.create: volumes key '%s' must be an absolute path"):format(tostring(path)), 3) end
      local name = type(v) == "table" and v.volume or v
      if type(name) ~= "string" or name == "" then
        error(("modal.create: volumes[\"%s\"] must be a volume name or {volume = name, read_only = false}"):format(path), 3)
      end
    end
  end
  local a = o.artifacts
  if a ~= nil then
    if type(a) ~= "table" or type(a.volume) ~= "string" or a.volume == "" then
      error("modal.create: artifacts must be {volume = name, run_id = id}", 3)
    end
    if type(a.run_id) ~= "string" or not a.run_id:match("^[%w][%w._-]*$") then
      error("modal.create: artifacts.run_id must be a run id (letters, digits, '.', '_', '-')", 3)
    end
    if a.path ~= nil and (not clean_path(a.path) or a.path == "/") then error("modal.create: artifacts.path must be an absolute path", 3) end
  end
end

---------------------------------------------------------------------------------------------------
-- the client, shared lookups, the creation rate

local shared_client

-- The process's Modal client (made from the environment and ~/.modal.toml on first use). With
-- opts (runbox.modal.client's options: env, home, token_id...) a new, uncached one.
function M.client(opts)
  local modal = require "runbox.modal"
  if opts then return modal.client(opts) end
  if shared_client then return shared_client end
  local c, err = modal.client()
  if not c then return nil, err end
  shared_client = c
  return c
end

local function client_of(opts)
  if opts.client then return opts.client end
  local c, err = M.client(opts.modal)
  if not c then return nil, wrap(err) end
  return c
end

local caches = setmetatable({}, {__mode = "k"})   -- client -> {images =, secrets =, volumes =}
local function cache_of(c)
  local t = caches[c]
  if not t then t = {images = {}, secrets = {}, volumes = {}}; caches[c] = t end
  return t
end

-- fn() once per key for all the tasks asking at the same time; a success is kept, a failure is
-- not (the next caller tries again).
local function once(tbl, key, fn)
  local e = tbl[key]
  while e and e.value == nil and not e.failed do
    e.done:wait()
    e = tbl[key]
  end
  if e then
    if e.failed then return nil, e.failed end
    return e.value
  end
  e = {done = sched.event()}
  tbl[key] = e
  local ok, value, err = pcall(fn)
  if ok and value then e.value = value
  elseif ok and type(err) == "table" and err.reason == "build_failed" then
    e.failed = err        -- a build that failed fails again: the tasks of a batch do not each retry it
  else tbl[key] = nil end
  e.done:set()
  if not ok then error(value, 0) end
  return value, err
end

local bucket
-- Sets the creation rate limit (per second, for every create of this process).
function M.set_create_rate(rate)
  if type(rate) ~= "number" or rate <= 0 then error("modal.set_create_rate: rate must be a positive number", 2) end
  M.CREATE_RATE, bucket = rate, nil
end

local function take_create_token()
  if not bucket then bucket = sched.token_bucket(M.CREATE_RATE, math.max(1, math.floor(M.CREATE_RATE))) end
  bucket:take()
end

-- Forgets the shared client, lookups and the rate bucket (tests).
function M.reset()
  shared_client, bucket = nil, nil
  caches = setmetatable({}, {__mode = "k"})
end

-- Build log chunks to whole lines for on_log(line).
local function line_splitter(on_log)
  local rest = ""
  local s = {}
  function s.feed(text)
    rest = rest .. text
    while true do
      local nl = rest:find("\n", 1, true)
      if not nl then break end
      local line = rest:sub(1, nl - 1):gsub("\r$", "")
      rest = rest:sub(nl + 1)
      on_log(line)
    end
  end
  function s.flush()
    if rest ~= "" then on_log(rest); rest = "" end
  end
  return s
end

local function image_key(spec)
  local parts = {spec.registry or "", tostring(spec.base and (spec.base.id or spec.base) or "")}
  local function add_list(l)
    parts[#parts + 1] = "\1"
    for _, line in ipairs(l or {}) do parts[#parts + 1] = tostring(line) end
  end
  add_list(spec.commands)
  for _, layer in ipairs(spec.layers or {}) do add_list(layer) end
  return table.concat(parts, "\0")
end

local function resolve_image(c, app, spec, on_log)
  spec = spec or M.DEFAULT_IMAGE
  if type(spec) == "string" then
    if spec:match("^im%-") then return {id = spec} end
    spec = {registry = spec}              -- a registry tag such as "python:3.12-slim"
  end
  if spec.id then return spec end
  return once(cache_of(c).images, app.id .. "\0" .. image_key(spec), function()
    local lines = on_log and line_splitter(on_log)
    local img, err = c:image{registry = spec.registry, base = spec.base, commands = spec.commands, layers = spec.layers,
                             app = app, force_build = spec.force_build,
                             on_log = lines and function(text) lines.feed(text) end}
    if lines then lines.flush() end
    if not img then return nil, wrap(err, "building the sandbox image") end
    return img
  end)
end

local function named_secret(c, name)
  return once(cache_of(c).secrets, name, function()
    local s, err = c:secret_from_name(name)
    if not s then return nil, wrap(err) end
    return s
  end)
end

local function named_volume(c, name, create)
  return once(cache_of(c).volumes, name .. (create and "\0create" or ""), function()
    local v, err = c:volume(name, {create = create, hint = M.VOLUME_HINTS[name]})
    if not v then return nil, wrap(err) end
    return v
  end)
end

---------------------------------------------------------------------------------------------------
-- create

local function sandbox_spec(c, o, app)
  local img, err = resolve_image(c, app, o.image, o.on_log)
  if not img then return nil, err end
  local secrets = {}
  for _, name in ipairs(o.secrets or {}) do
    local s
    s, err = named_secret(c, name)
    if not s then return nil, err end
    secrets[#secrets + 1] = s
  end
  local mounts = {}
  for path, v in pairs(o.volumes or {}) do
    local name, ro = v, true
    if type(v) == "table" then name, ro = v.volume, v.read_only ~= false end
    local vol
    vol, err = named_volume(c, name, false)
    if not vol then return nil, err end
    mounts[(clean_path(path))] = {volume = vol, read_only = ro}
  end
  if o.artifacts then
    local vol
    vol, err = named_volume(c, o.artifacts.volume, true)
    if not vol then return nil, err end
    mounts[M.ARTIFACTS_MOUNT] = {volume = vol, read_only = false}
  end
  local timeout = math.min(math.ceil((o.timeout or M.DEFAULT_TIMEOUT) + M.TIMEOUT_MARGIN), M.MAX_TIMEOUT)
  return {image = img, app = app, cpu = o.cpu, memory = o.memory and math.tointeger(o.memory),
          timeout = timeout, workdir = o.workdir, secrets = secrets,
          env = o.secret_env and next(o.secret_env) and o.secret_env or nil,
          volumes = mounts, tags = o.tags, network = o.network, start_timeout = o.start_timeout}
end

-- Creates a sandbox. opts: workdir ("/app"), env (variables for every exec), timeout (seconds for
-- the whole sandbox), network (true), tags, image ({registry =, commands =}, a tag or "im-..."; default
-- M.DEFAULT_IMAGE), cpu, memory (MiB), app ("runbox"), secrets (named Modal secrets), secret_env
-- (variables sent as an ephemeral secret), volumes ({["/path"] = name}), artifacts ({volume =,
-- run_id =}), on_log (image build log lines), client (a runbox.modal client), modal (options
-- of runbox.modal.client when no client is given). Returns the sandbox or nil, err.
function M.create(opts)
  opts = opts or {}
  check_create(opts)
  local tags = check_tags(opts.tags, "modal.create")
  local env = {}
  for k, v in pairs(check_env(opts.env, "modal.create")) do env[k] = tostring(v) end
  local workdir, why = clean_path(opts.workdir or M.WORKDIR)
  if not workdir or workdir == "/" then
    return fail(("modal.create: workdir '%s' %s"):format(tostring(opts.workdir), why or "cannot be /"))
  end
  local c, err = client_of(opts)
  if not c then return nil, err end
  local app
  app, err = c:app(opts.app or M.DEFAULT_APP)
  if not app then return nil, wrap(err, "getting the Modal app") end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.tags, o.workdir = tags, workdir
  local spec
  spec, err = sandbox_spec(c, o, app)
  if not spec then return nil, err end

  take_create_token()
  local msb
  do
    -- interrupted while SandboxCreate was on its way (Ctrl-C, a deadline), the server may have
    -- made the sandbox without runbox learning its id: the caller's tags find it
    local settled = false
    local orphan_guard <close> = setmetatable({}, {__close = function()
      if settled or not next(tags) then return end
      pcall(function()
        for _, found in ipairs(M.list{tags = tags, client = c} or {}) do M.terminate_id(found.id, {client = c}) end
      end)
    end})
    msb, err = c:sandbox_create(spec)
    settled = true
  end
  if not msb then return nil, wrap(err, "creating the Modal sandbox") end

  local art
  if opts.artifacts then
    art = {volume = opts.artifacts.volume, run_id = opts.artifacts.run_id,
           path = clean_path(opts.artifacts.path or M.ARTIFACTS_PATH),
           dir = M.ARTIFACTS_MOUNT .. "/" .. opts.artifacts.run_id}
  end
  local timeout = opts.timeout or M.DEFAULT_TIMEOUT
  local sb = setmetatable({
    id = msb.id, backend = M.name, tags = tags, workdir = workdir, env = env,
    network = opts.network ~= false, timeout = timeout, state = "running", created_at = util.time(),
    app_id = app.id, artifacts = art, client = c,
    _msb = msb, _deadline = sched.now() + timeout, _execs = setmetatable({}, {__mode = "k"}),
  }, Sandbox)

  -- from here on, a failure (or a cancelled task) terminates the sandbox
  local ready = false
  local guard <close> = setmetatable({}, {__close = function()
    if not ready then
      local tok, done, terr = pcall(sb.terminate, sb, {reason = "create failed"})
      if not (tok and done) then
        log.warn("Modal sandbox %s could not be terminated after a failed create (%s); stop it with "
                 .. "`modal sandbox terminate %s`", sb.id, errors.message(tok and terr or done), sb.id)
      end
    end
  end})
  local r
  r, err = sb:_run({"sh", "-c", SETUP, "runbox-setup", M.EXEC_DIR, workdir, art and art.dir or "", art and art.path or ""},
                   {timeout = 300})
  if not r then return nil, wrap(err, ("setting up sandbox %s"):format(sb.id)) end
  if r.code ~= 0 then
    return fail(("setting up sandbox %s failed (exit %d): %s (the image needs sh, mkdir, ln)")
                :format(sb.id, r.code, (r.stderr:gsub("%s+$", ""))), {sandbox = sb.id})
  end
  ready, sb._ready = true, true
  live[sb.id] = sb
  return sb
end

---------------------------------------------------------------------------------------------------
-- exec

local function timeout_error(sb)
  return errors.new("timeout", ("sandbox %s reached its time limit of %gs (create{timeout=}): it runs nothing more")
                    :format(sb.id, sb.timeout), {sandbox = sb.id})
end

function Sandbox:_expired()
  if self.state == "expired" then return true end
  if self.state == "running" and sched.now() >= self._deadline then
    self.state, self.reason = "expired", "time limit"
    return true
  end
  return false
end

-- A failed start of an exec: the sandbox's end becomes "terminated"/"timeout" errors.
function Sandbox:_exec_error(err)
  if type(err) == "table" and (err.reason == "task_ended" or err.reason == "sandbox_ended") then
    if sched.now() >= self._deadline - 2 then
      self.state = "expired"
      return timeout_error(self)
    end
    return wrap(err, ("sandbox %s has ended"):format(self.id))
  end
  return wrap(err)
end

-- Runs a plain command (no wrapper) to its end: {code =, how =, stdout =, stderr =} or nil, err.
function Sandbox:_run(argv, opts)
  if self.state == "terminated" then
    return fail(("sandbox %s was terminated: create a new one"):format(self.id), {sandbox = self.id})
  end
  local o = {env = self.env}
  for k, v in pairs(opts or {}) do o[k] = v end
  local r, err = self._msb:run(argv, o)
  if not r then return nil, self:_exec_error(err) end
  return r
end

local function exec_env(sb, env) return checks.merged_env(nil, sb.env, env) end

-- Runs argv inside the sandbox. opts: cwd (default the workdir), env (false unsets a variable of
-- create's env), stdin (a string, or "pipe"), stdout / stderr ("pipe", "null", a function;
-- stderr = "stdout" merges), on_stdout / on_stderr, timeout (seconds), plain (no wrapper: the
-- command cannot be signalled). Returns a process with the runbox.proc API or nil, err.
function Sandbox:exec(argv, opts)
  local env
  opts, env = checks.exec_args(argv, opts)
  if self.state == "terminated" then
    return fail(("sandbox %s was terminated: create a new one"):format(self.id), {sandbox = self.id})
  end
  if self:_expired() then return nil, timeout_error(self) end
  local cwd, why = clean_path(opts.cwd or self.workdir)
  if not cwd then return fail(("sb:exec: cwd '%s' %s"):format(tostring(opts.cwd), why)) end
  local timeout = opts.timeout
  local remaining = self._deadline - sched.now()
  if not timeout or remaining < timeout then timeout = remaining end

  local merge = opts.stderr == "stdout"
  local id = util.random_hex(12)
  local cmd = argv
  if not opts.plain then
    cmd = {"sh", "-c", WRAPPER, "runbox-exec", id, merge and "1" or "0"}
    for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  elseif merge then
    error("sb:exec: stderr = \"stdout\" needs the wrapper (plain = false)", 2)
  end
  local p, err = self._msb:exec(cmd, {
    workdir = cwd, env = exec_env(self, env), stdin = opts.stdin, timeout = timeout,
    stdout = opts.stdout, stderr = merge and "null" or opts.stderr,
    on_stdout = opts.on_stdout, on_stderr = opts.on_stderr,
  })
  if not p then return nil, self:_exec_error(err) end
  local wp = setmetatable({_p = p, _sb = self, _id = id, _plain = opts.plain and true or false,
                           name = argv[1], argv = argv, exec_id = p.exec_id, timeout = timeout,
                           deadline = sched.now() + timeout}, Proc)
  self._execs[wp] = true
  return wp
end

---------------------------------------------------------------------------------------------------
-- the process object

Proc.__close = function(p) p:close() end
Proc.__tostring = function(p) return ("exec %s (%s) in modal sandbox %s"):format(p._id, p.name, p._sb.id) end

function Proc:read(stream) return self._p:read(stream) end
function Proc:lines(stream) return self._p:lines(stream) end
function Proc:read_all(stream) return self._p:read_all(stream) end
function Proc:write(data) return self._p:write(data) end
function Proc:close_stdin() return self._p:close_stdin() end
function Proc:poll() return self._p:poll() end
function Proc:running() return self._p.exit_code == nil end

-- The exit: code, how ("exit", "signal" or "timeout"). With `timeout` (seconds): nil, err (code
-- "timeout") if it still runs then. Past its own time limit and a grace the exec is killed by
-- runbox (in case the server did not), and any leftovers of a timed-out exec are signalled.
function Proc:wait(timeout)
  local limit = self.deadline + M.KILL_GRACE - sched.now()
  if timeout and timeout < limit then return self._p:wait(timeout) end
  local code, how = self._p:wait(math.max(limit, 0.001))
  -- killed by runbox's signal: some runtimes report the shell's 128 + signal as an exit status
  if code and how == "exit" and self._sent and code == 128 + self._sent then how = "signal" end
  if code then
    -- the server ended it at its time limit: what it started may have outlived it
    if how == "timeout" and not self._plain then pcall(self._signal, self, 9) end
    return code, how
  end
  if not errors.is(how, "timeout") then return nil, how end
  -- past the time limit and still running: runbox stops it itself
  pcall(self._signal, self, 9)
  code = self._p:wait(M.KILL_GRACE)
  if not code then
    self._p:close()
    self._p.exit_code, self._p.exit_how = 137, "timeout"
  end
  self._p.exit_how = "timeout"
  return self._p.exit_code, "timeout"
end

local function signum(sig)
  if sig == nil then return 15 end
  if type(sig) == "string" then
    local n = SIGNALS[sig:upper():gsub("^SIG", "")]
    if not n then error(("p:kill: unknown signal '%s'"):format(sig), 3) end
    return n
  end
  if math.type(sig) ~= "integer" or sig < 1 or sig > 64 then error("p:kill: signal must be a signal number or name", 3) end
  return sig
end

-- Sends a signal (default SIGTERM) to the command and everything it started: through the
-- wrapper's FIFO, from another exec. Returns true (also when it has already ended) or nil, err.
function Proc:kill(sig)
  sig = signum(sig)
  if self._p.exit_code ~= nil or self._sb.state == "terminated" then return true end
  if self._plain then
    return fail(("%s was started with plain = true: it cannot be signalled"):format(tostring(self)))
  end
  return self:_signal(sig)
end

function Proc:_signal(sig)
  self._sent = sig
  local r, err = self._sb:_run({"sh", "-c", KILL, "runbox-kill", self._id, tostring(sig)}, {timeout = 30})
  if not r then return nil, err end
  if r.code ~= 0 then
    return fail(("cannot signal %s (exit %d): %s"):format(tostring(self), r.code, (r.stderr:gsub("%s+$", ""))))
  end
  return true
end

-- Stops reading; a command still running is killed (as runbox.proc's close does).
function Proc:close()
  if self._p.exit_code == nil and not self._plain and self._sb.state ~= "terminated" then
    local ok, code = pcall(self._p.poll, self._p)
    if ok and code == nil then pcall(self.kill, self, 9) end
  end
  self._p:close()
end

---------------------------------------------------------------------------------------------------
-- files in and out

-- The folder of a path that a link on the way may point into: the path's top folder, or the
-- run's artifacts folder on the volume.
function Sandbox:_allowed(path)
  local top = path:match("^/[^/]+") or "/"
  return top, self.artifacts and self.artifacts.dir or ""
end

local function script_error(sb, what, path, r)
  if type(r.stderr) ~= "string" then r.stderr = "" end
  local why = (r.stderr:gsub("%s+$", ""):gsub("^runbox: ", ""))
  if r.code == 45 then return fail(("%s '%s': %s"):format(what, path, why), {reason = "unsafe", sandbox = sb.id}) end
  if r.code == 44 then return fail(("%s: '%s' does not exist in sandbox %s"):format(what, path, sb.id), {sandbox = sb.id}) end
  return fail(("%s '%s' in sandbox %s failed (exit %d): %s"):format(what, path, sb.id, r.code, why), {sandbox = sb.id})
end

local function with_context(what, err)
  if errors.is(err) then err.message = what .. ": " .. err.message end
  return nil, err
end

-- Writes data to the file path inside the sandbox (parents made; an existing file replaced; a
-- link at the file replaced; a folder on the way that is a link pointing outside is refused).
-- opts.mode: permission bits ("755").
function Sandbox:write_file(path, data, opts)
  if type(path) ~= "string" then error("sb:write_file: path must be a string", 2) end
  if type(data) ~= "string" then error("sb:write_file: data must be a string", 2) end
  local mode = opts and opts.mode
  if mode ~= nil and not tostring(mode):match("^[0-7]+$") then error("sb:write_file: mode must be octal digits such as \"755\"", 2) end
  local clean, why = clean_path(path)
  if not clean then return fail(("write_file: '%s' %s"):format(path, why)) end
  if clean == "/" then return fail(("write_file: '%s' does not name a file"):format(path)) end
  local top, allow = self:_allowed(clean)
  local r, err = self:_run({"sh", "-c", WRITE, "runbox-write", clean, top, allow, mode and tostring(mode) or ""},
                           {stdin = data, timeout = M.FILE_TIMEOUT})
  if not r then return nil, err end
  if r.code ~= 0 then return script_error(self, "write_file", clean, r) end
  return true
end

-- Streams the archive chunks of reader() into `tar -x` in the folder dest inside.
function Sandbox:_untar(reader, dest, what)
  if self.state == "terminated" then return fail(("%s: sandbox %s was terminated"):format(what, self.id)) end
  local top, allow = self:_allowed(dest)
  local p, err = self._msb:exec({"sh", "-c", UNTAR, "runbox-untar", dest, top, allow},
                                {stdin = "pipe", timeout = M.FILE_TIMEOUT, env = self.env})
  if not p then return nil, self:_exec_error(err) end
  local guard <close> = p
  local read_err, write_err
  while true do
    local chunk, rerr = reader()
    if rerr then read_err = rerr break end
    if not chunk then break end
    local ok, werr = p:write(chunk)
    if not ok then write_err = werr break end
  end
  pcall(p.close_stdin, p)    -- also after a failed write: tar must not wait for more input
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local code, how = p:wait()
  local stderr = select(2, errtask:wait())
  if not code then return nil, wrap(how, what) end
  if code ~= 0 then return script_error(self, what, dest, {code = code, stderr = stderr or ""}) end
  if read_err then return with_context(what, read_err) end
  if write_err then return nil, wrap(write_err, what) end
  return true
end

local function check_dest(sb, dest, what)
  local clean, why = clean_path(dest or sb.workdir)
  if not clean then return fail(("%s: '%s' %s"):format(what, tostring(dest), why)) end
  return clean
end

-- Unpacks a tar archive (a file path or the archive bytes; any compression) into the folder dest
-- inside (default the workdir). The archive is checked (and unpacked) here first with
-- runbox.tar's safe unpacking, so a hostile archive is refused before anything reaches the sandbox.
function Sandbox:put_tar(src, dest, opts)
  if type(src) ~= "string" then error("sb:put_tar: src must be an archive path or archive bytes", 2) end
  opts = opts or {}
  local clean, err = check_dest(self, dest, "put_tar")
  if not clean then return nil, err end
  local tmp
  tmp, err = fs.temp_dir("runbox-modal-put")
  if not tmp then return nil, err end
  local cleanup <close> = setmetatable({}, {__close = function() fs.remove_tree(tmp) end})
  local tar = lazy_tar()
  local ok, terr = tar.unpack(src, tmp, {outside_links = opts.outside_links or "keep",
                                         max_bytes = opts.max_bytes, max_entries = opts.max_entries})
  if not ok then return with_context(("put_tar into '%s'"):format(clean), terr) end
  local pk <close>, perr = tar.packer(tmp, {compression = "none"})
  if not pk then return with_context("put_tar", perr) end
  return self:_untar(function() return pk:read(M.CHUNK) end, clean, "put_tar into")
end

-- Copies the contents of the host folder local_dir into dest inside. opts.exclude: glob patterns.
function Sandbox:put_dir(local_dir, dest, opts)
  if type(local_dir) ~= "string" then error("sb:put_dir: local_dir must be a folder path", 2) end
  local st = fs.stat(local_dir)
  if not st or st.type ~= "dir" then return fail(("put_dir: '%s' is not a folder"):format(local_dir)) end
  local clean, err = check_dest(self, dest, "put_dir")
  if not clean then return nil, err end
  local pk <close>, perr = lazy_tar().packer(local_dir, {compression = "none", exclude = opts and opts.exclude})
  if not pk then return with_context("put_dir", perr) end
  return self:_untar(function() return pk:read(M.CHUNK) end, clean, "put_dir into")
end

-- Runs `tar -c` of src inside and unpacks its stdout safely into the host folder dest.
function Sandbox:_fetch(src, dest, unpack_opts)
  local p, err = self._msb:exec({"sh", "-c", TARC, "runbox-tar", src}, {timeout = M.FILE_TIMEOUT, env = self.env})
  if not p then return nil, self:_exec_error(err) end
  local guard <close> = p
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local ok, uerr = lazy_tar().unpack_from(function() return p:read("stdout") end, dest, unpack_opts)
  if not ok then pcall(p.kill, p, 9) end
  local code, how = p:wait()
  local stderr = select(2, errtask:wait())
  if not code then return nil, wrap(how, "get_tar") end
  -- GNU tar exits 1 when a file changed while it was read: the archive is still whole
  if code > 1 then return script_error(self, "get_tar", src, {code = code, stderr = stderr or ""}) end
  if not ok then return with_context(("get_tar of '%s'"):format(src), uerr) end
  return true
end

-- Copies src (a folder or a file inside) out: unpacked safely into the host folder local_dir (a
-- folder's contents; a file under its name), or, without local_dir, returned as a tar archive
-- string. opts: exclude, compression (for the string), outside_links ("skip"), max_bytes,
-- max_entries.
function Sandbox:get_tar(src, local_dir, opts)
  if type(src) ~= "string" then error("sb:get_tar: src must be a path inside the sandbox", 2) end
  if local_dir ~= nil and type(local_dir) ~= "string" then error("sb:get_tar: local_dir must be a folder path", 2) end
  opts = opts or {}
  if self.state == "terminated" then
    return fail(("get_tar: sandbox %s was terminated (artifacts are on their volume: `runbox fetch`)"):format(self.id))
  end
  local clean, why = clean_path(src)
  if not clean then return fail(("get_tar: '%s' %s"):format(src, why)) end
  local limits = {max_bytes = opts.max_bytes, max_entries = opts.max_entries}
  if local_dir and not opts.exclude then
    limits.outside_links = opts.outside_links or "skip"
    return self:_fetch(clean, local_dir, limits)
  end
  -- an archive to return, or a selection: through a temp folder
  local tmp, err = fs.temp_dir("runbox-modal-get")
  if not tmp then return nil, err end
  local cleanup <close> = setmetatable({}, {__close = function() fs.remove_tree(tmp) end})
  limits.outside_links = "keep"
  local ok
  ok, err = self:_fetch(clean, tmp .. "/t", limits)
  if not ok then return nil, err end
  local tar = lazy_tar()
  if not local_dir then
    local data, perr = tar.pack(tmp .. "/t", {exclude = opts.exclude, compression = opts.compression})
    if not data then return with_context("get_tar", perr) end
    return data
  end
  local pk <close>, perr = tar.packer(tmp .. "/t", {compression = "none", exclude = opts.exclude})
  if not pk then return with_context("get_tar", perr) end
  local uok, uerr = tar.unpack_from(function() return pk:read(M.CHUNK) end, local_dir,
                                    {outside_links = opts.outside_links or "skip"})
  if not uok then return with_context(("get_tar of '%s'"):format(clean), uerr) end
  return true
end

---------------------------------------------------------------------------------------------------
-- terminate

-- Terminates the sandbox: with artifacts, their volume is synced first and the end waited for (so
-- the files are committed). Idempotent; also the <close> handler. Returns true or nil, err.
function Sandbox:terminate(opts)
  if self.state == "terminated" and not self._terminate_failed then return true end
  if self.state ~= "terminated" then
    local was = self.state
    self.state = "terminated"
    self.reason = (opts and opts.reason) or (was == "expired" and "time limit") or "terminated"
    self.terminated_at = util.time()
    live[self.id] = nil
    if self.artifacts and self._ready then
      pcall(self._msb.run, self._msb, {"sync", self.artifacts.dir}, {timeout = 60})
    end
  end
  local ok, err = self._msb:terminate()
  if not ok and not (type(err) == "table" and err.grpc_status == "NOT_FOUND") then
    self._terminate_failed = true
    return nil, wrap(err, ("terminating sandbox %s"):format(self.id))
  end
  self._terminate_failed = nil
  if self.artifacts then pcall(self._msb.wait, self._msb, {timeout = M.TERMINATE_WAIT}) end
  return true
end

function Sandbox:destroy() return self:terminate() end

Sandbox.__close = function(sb)
  local done, err = sb:terminate()
  if not done then
    log.warn("Modal sandbox %s could not be terminated (%s); stop it with `modal sandbox terminate %s`",
             sb.id, errors.message(err), sb.id)
  end
end
Sandbox.__tostring = function(sb) return ("sandbox %s (modal, %s)"):format(sb.id, sb.state) end

-- Running execs (their process objects).
function Sandbox:running() return checks.running(self._execs) end

---------------------------------------------------------------------------------------------------
-- list and terminate_id (Modal keeps the sandboxes: any runbox process finds them by tags)

-- The sandboxes (of every app, or opts.app) carrying every tag of opts.tags: {id =, backend =,
-- tags =, app_id =, created_at =, alive =, state =}, oldest first. Running ones only, unless
-- opts.include_finished. opts.client / opts.modal as for create. Returns the list or nil, err.
function M.list(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("modal.list: opts must be a table", 2) end
  local tags = check_tags(opts.tags, "modal.list")
  local c, err = client_of(opts)
  if not c then return nil, err end
  local list
  list, err = c:sandbox_list{tags = tags, app = opts.app or false, include_finished = opts.include_finished}
  if not list then return nil, wrap(err, "listing Modal sandboxes") end
  local out = {}
  for _, s in ipairs(list) do
    out[#out + 1] = {id = s.id, backend = M.name, tags = s.tags, app_id = s.app_id, created_at = s.created_at,
                     alive = s.result == nil, state = s.result and s.result.status or "running"}
  end
  return checks.oldest_first(out)
end

-- Terminates the sandbox `id` from any runbox process. Returns true, or nil, err (code
-- "not_found" for an id Modal does not know).
function M.terminate_id(id, opts)
  checks.sandbox_id(id, "modal.terminate_id", "sb-0123abcd")
  opts = opts or {}
  local mine = live[id]
  if mine then return mine:terminate() end
  local c, err = client_of(opts)
  if not c then return nil, err end
  local ok
  ok, err = c:sandbox_terminate(id)
  if ok then return true end
  if type(err) == "table" and err.grpc_status == "NOT_FOUND" then
    return nil, errors.new("not_found", ("no Modal sandbox '%s': %s"):format(id, errors.message(err)))
  end
  return nil, wrap(err, ("terminating sandbox %s"):format(id))
end

return M
