-- runbox setup: put on Modal what `--backend modal` needs: the local codex installation in the
-- volume codex-installation (with a manifest naming its executable) and the secret
-- openai-api-keys made from OPENAI_API_KEY. Says what it did and what is missing; exit 0 when
-- everything is in place, 1 otherwise. The key is never printed. See docs/api/recipes-modal.md.
local cli = require "runbox.cli"
local fs = require "runbox.fs"
local json = require "runbox.json"
local util = require "runbox.util"
local log = require "runbox.log"
local proc = require "runbox.proc"
local progress = require "runbox.progress"
local modal = require "runbox.modal"

local VOLUME = "codex-installation"
local SECRET = "openai-api-keys"
local KEY = "OPENAI_API_KEY"
local MANIFEST = "runbox-codex.json"
local INSTALL_HINT = "install it with `npm install -g @openai/codex`, or point at it with --codex-bin PATH"

local spec = {
  name = "setup",
  summary = "Upload the local codex installation to the Modal volume " .. VOLUME .. " and create the Modal\n"
         .. "secret " .. SECRET .. " from " .. KEY .. ", so that runs with --backend modal can use both.",
  flags = {
    {name = "codex-bin", value = "PATH", help = "the codex to upload (default: codex on PATH)"},
    {name = "env-file", value = "FILE", help = "read " .. KEY .. " from this file (default: the environment, else ./.env)"},
    {name = "force", help = "replace the secret " .. SECRET .. " when it exists"},
    {name = "dry-run", help = "find codex and the key, check Modal, but change nothing"},
  },
  epilog = "Modal credentials: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml (`modal token new`).\n"
        .. "Unchanged files are not sent again, so running setup again is cheap.",
}

local args = cli.main(spec, {...})

local problems = {}
local function say(fmt, ...) io.stdout:write(fmt:format(...), "\n") io.stdout:flush() end
local function problem(what, text)
  problems[#problems + 1] = what .. ": " .. text
  say("[missing] %s", what)
end

---------------------------------------------------------------------------------------------------
-- finding codex

local function dirname(path) return path:match("^(.*)/[^/]*$") end

local function on_path(name)
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local p = dir .. "/" .. name
    local st = fs.stat(p)
    if st and st.type == "file" and st.mode & 73 ~= 0 then return p end
  end
end

-- True when path is a 64-bit little-endian x86-64 ELF file: what a Modal sandbox can run.
local function linux_x64(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local h = f:read(20)
  f:close()
  return h ~= nil and #h == 20 and h:sub(1, 4) == "\127ELF" and h:byte(5) == 2 and h:byte(6) == 1
         and h:byte(19) == 0x3E and h:byte(20) == 0
end

-- The folder above `real` whose node_modules/@openai/codex holds package.json (an npm prefix or
-- project), or nil.
local function npm_root(real)
  local dir = dirname(real)
  while dir and dir ~= "" do
    if fs.exists(dir .. "/node_modules/@openai/codex/package.json") then return dir end
    dir = dirname(dir)
  end
end

-- The files of a folder (symlinks are not uploaded): {src =, dest =, size =, mtime =}.
local function tree_files(src_dir, dest_dir, out)
  local entries, err = fs.walk(src_dir)
  if not entries then return nil, err end
  for _, e in ipairs(entries) do
    if e.type == "file" then
      local st = fs.stat(src_dir .. "/" .. e.path)
      out[#out + 1] = {src = src_dir .. "/" .. e.path, dest = dest_dir .. "/" .. e.path,
                       size = st and st.size or 0, mtime = st and st.mtime or 0}
    end
  end
  return out
end

-- The executable to run in the sandbox: the given one when it is a Linux x86-64 binary of the
-- tree, else the tree's Linux x86-64 `codex` (musl builds first: they need no libc).
local function native_bin(files, real)
  for _, f in ipairs(files) do
    if f.real == real and linux_x64(f.src) then return f.dest end
  end
  local best, best_rank
  for _, f in ipairs(files) do
    local base = f.dest:match("[^/]+$")
    if (base == "codex" or base:match("^codex%-x86_64%-unknown%-linux")) and linux_x64(f.src) then
      local rank = (f.dest:find("musl", 1, true) and 0 or 1000) + #f.dest
      if not best or rank < best_rank then best, best_rank = f.dest, rank end
    end
  end
  return best
end

-- An npm installation: the @openai/codex package and its platform packages (codex-linux-x64...)
-- next to it; nothing else of the prefix is uploaded.
local function npm_install(root, real)
  local scope = root .. "/node_modules/@openai"
  local names = fs.list(scope) or {}
  local parts, files = {}, {}
  for _, name in ipairs(names) do
    if name == "codex" or name:match("^codex%-") then
      local src = fs.realpath(scope .. "/" .. name)
      local st = src and fs.stat(src)
      if st and st.type == "dir" then
        local dest = "node_modules/@openai/" .. name
        parts[#parts + 1] = {src = src, dest = dest}
        local ok, err = tree_files(src, dest, files)
        if not ok then return nil, ("cannot read %s: %s"):format(src, tostring(err)) end
      end
    end
  end
  for _, f in ipairs(files) do f.real = fs.realpath(f.src) end
  local pkg = json.decode_file(scope .. "/codex/package.json")
  local inst = {kind = "npm", root = root, parts = parts, files = files,
                version = type(pkg) == "table" and pkg.version or nil}
  inst.bin = native_bin(files, real)
  if not inst.bin then
    return nil, ("the codex installation in %s has no Linux x86-64 executable (Modal sandboxes run Linux "
                 .. "x86-64, and npm installs only the build of the system it runs on): run `runbox setup` on "
                 .. "Linux x86-64, or point --codex-bin at a Linux x86-64 codex"):format(root)
  end
  return inst
end

local function binary_version(path)
  local r = proc.run{path, "--version", timeout = 10}
  if r and r.code == 0 then return r.stdout:match("(%d+%.%d+[%w.%-]*)") end
end

-- A codex that is not part of an npm installation: the executable alone.
local function standalone(real, shown)
  if not linux_x64(real) then
    return nil, ("%s is neither a Linux x86-64 executable (what Modal sandboxes run) nor part of an npm "
                 .. "installation of @openai/codex (no node_modules/@openai/codex/package.json above it): %s")
                :format(shown, INSTALL_HINT)
  end
  local st = fs.stat(real)
  local files = {{src = real, dest = "bin/codex", size = st.size, mtime = st.mtime, real = real}}
  return {kind = "binary", root = dirname(real), parts = {{src = real, dest = "bin/codex"}}, files = files,
          bin = "bin/codex", version = binary_version(real)}
end

-- Finds the codex installation to upload: {kind, root, parts = {{src, dest}}, files, bin,
-- version, bytes, fingerprint, shown} or nil, message.
local function find_codex(given)
  local shown = given or on_path("codex")
  if not shown then return nil, "codex is not on PATH: " .. INSTALL_HINT end
  if not fs.exists(shown) then return nil, ("--codex-bin %s: no such file: %s"):format(shown, INSTALL_HINT) end
  local real = assert(fs.realpath(shown))
  local root = npm_root(real)
  local inst, err
  if root then inst, err = npm_install(root, real) else inst, err = standalone(real, shown) end
  if not inst then return nil, err end
  inst.shown, inst.real = shown, real
  table.sort(inst.files, function(a, b) return a.dest < b.dest end)
  local lines, bytes = {}, 0
  for _, f in ipairs(inst.files) do
    bytes = bytes + f.size
    lines[#lines + 1] = ("%s\t%d\t%.0f"):format(f.dest, f.size, f.mtime)
  end
  inst.bytes = bytes
  inst.fingerprint = util.sha256(table.concat(lines, "\n") .. "\n" .. inst.bin .. "\n" .. tostring(inst.version))
  return inst
end

---------------------------------------------------------------------------------------------------
-- finding the key

-- The key and where it came from, or nil, message (never the value). An explicit --env-file
-- comes first; else the environment, then ./.env.
local function find_key(env_file)
  local looked = {}
  if not env_file then
    local v = os.getenv(KEY)
    if v and v ~= "" then return v, "the environment" end
    looked[#looked + 1] = "the environment"
  end
  local file = env_file or ".env"
  local shown = file:sub(1, 1) == "/" and file or ((fs.realpath(".") or ".") .. "/" .. file)
  if fs.exists(file) then
    local vals, err = util.load_dotenv(file)
    if not vals then return nil, tostring(err) end
    local v = vals[KEY]
    if v and v ~= "" then return v, file end
    looked[#looked + 1] = shown .. " (not in it)"
  elseif env_file then
    return nil, ("--env-file %s: no such file"):format(env_file)
  else
    looked[#looked + 1] = shown .. " (no such file)"
  end
  return nil, ("no %s found: looked in %s; export %s=..., or put %s=... in ./.env (or in the file given with --env-file)")
              :format(KEY, table.concat(looked, " and in "), KEY, KEY)
end

---------------------------------------------------------------------------------------------------
-- Modal steps

local function read_manifest(vol)
  local data = vol:read(MANIFEST)
  local m = data and json.decode(data)
  return type(m) == "table" and m or nil
end

-- Removes files of an older installation (anything the new one does not have).
local function prune(vol, inst)
  local keep = {[MANIFEST] = true}
  for _, f in ipairs(inst.files) do keep[f.dest] = true end
  local entries, err = vol:list("", {recursive = true})
  if not entries then return nil, err end
  local n = 0
  for _, e in ipairs(entries) do
    if e.type == "file" and not keep[e.path] then
      local ok, rerr = vol:remove(e.path)
      if not ok then return nil, rerr end
      n = n + 1
    end
  end
  return n
end

local function upload(c, inst)
  local vol, err = c:volume(VOLUME)
  local exists = vol ~= nil
  if not vol and err.reason ~= "not_found" then return nil, err.message end
  if args.dry_run then
    local m = vol and read_manifest(vol)
    if m and m.fingerprint == inst.fingerprint then
      say("[ok] volume %s holds this installation already (uploaded %s)", VOLUME, tostring(m.uploaded_at))
    else
      say("[would] %s volume %s and upload %d files (%s; blocks it holds already are not sent)",
          exists and "update" or "create", VOLUME, #inst.files, progress.bytes(inst.bytes))
    end
    return true
  end
  if not vol then
    vol, err = c:volume(VOLUME, {create = true})
    if not vol then return nil, err.message end
    say("[ok] volume %s created", VOLUME)
  end
  local bar = progress.new{label = VOLUME, total = inst.bytes}
  local sent = 0
  for _, part in ipairs(inst.parts) do
    local r, perr = vol:put(part.src, part.dest, {on_progress = function(n) bar:add(n) end})
    if not r then
      if bar.tty then io.stderr:write("\n") end
      return nil, ("uploading %s: %s"):format(part.src, perr.message)
    end
    sent = sent + r.sent
  end
  bar:finish()
  say("[ok] volume %s: %d files (%s) in place, %s", VOLUME, #inst.files, progress.bytes(inst.bytes),
      sent == 0 and "nothing sent (unchanged)" or (progress.bytes(sent) .. " sent"))
  local old = read_manifest(vol)
  if old and old.fingerprint == inst.fingerprint and old.bin == inst.bin then
    say("[ok] manifest %s unchanged: bin %s", MANIFEST, inst.bin)
  else
    local manifest = {bin = inst.bin, version = inst.version, kind = inst.kind, files = #inst.files,
                      bytes = inst.bytes, fingerprint = inst.fingerprint, source = inst.root,
                      uploaded_at = util.iso8601()}
    local ok, merr = vol:put_bytes(json.pretty(manifest) .. "\n", MANIFEST)
    if not ok then return nil, ("writing %s: %s"):format(MANIFEST, merr.message) end
    say("[ok] manifest %s written: bin %s (version %s)", MANIFEST, inst.bin, tostring(inst.version or "unknown"))
  end
  local removed, rerr = prune(vol, inst)
  if not removed then return nil, ("removing old files: %s"):format(rerr.message) end
  if removed > 0 then say("[ok] removed %d files of an older installation", removed) end
  local ok, cerr = vol:commit()
  if not ok then return nil, ("committing: %s"):format(cerr.message) end
  return true
end

local function secret_step(c, key, source)
  local found, err = c:secret_from_name(SECRET, {required_keys = {KEY}})
  local replace
  if found then
    if not args.force then
      say("[ok] secret %s exists (kept; --force replaces it)", SECRET)
      return true
    end
    replace = true
  elseif err.reason == "missing_key" then
    if not args.force then
      return nil, ("the secret %s exists but has no %s: run `runbox setup --force` with %s set to replace it")
                  :format(SECRET, KEY, KEY)
    end
    replace = true
  elseif err.reason ~= "not_found" then
    return nil, err.message
  end
  if not key then return nil, source end
  if args.dry_run then
    say("[would] %s secret %s from %s in %s", replace and "replace" or "create", SECRET, KEY, source)
    return true
  end
  local ok, cerr = c:secret_create(SECRET, {[KEY] = key}, {overwrite = replace})
  if not ok then return nil, cerr.message end
  say("[ok] secret %s %s from %s in %s", SECRET, replace and "replaced" or "created", KEY, source)
  return true
end

---------------------------------------------------------------------------------------------------

local inst, cerr = find_codex(args.codex_bin)
if inst then
  say("[ok] codex: %s%s", inst.shown, inst.real ~= inst.shown and (" -> " .. inst.real) or "")
  say("     %s in %s: %d files, %s, version %s", inst.kind == "npm" and "npm installation" or "standalone binary",
      inst.root, #inst.files, progress.bytes(inst.bytes), tostring(inst.version or "unknown"))
  say("     executable: %s", inst.bin)
else
  problem("codex", cerr)
end

local key, source = find_key(args.env_file)
if key then log.redact(key) end

local c, merr = modal.client()
if c then
  local ok, herr = c:hello()
  if ok then
    say("[ok] Modal at %s (token from %s)", tostring(c.config.server_url), tostring(c.config.sources.token_id))
  else
    merr, c = herr, nil
  end
end

if not c then
  problem("Modal", merr.message .. " (nothing was uploaded or created)")
  if not key then problem(SECRET, source) end
else
  if inst then
    local ok, err = upload(c, inst)
    if not ok then problem(VOLUME, err) end
  else
    say("[skipped] volume %s: no codex to upload", VOLUME)
  end
  local ok, err = secret_step(c, key, source)
  if not ok then problem(SECRET, err) end
end

if #problems == 0 then
  say(args.dry_run and "Dry run: nothing was changed; everything needed was found."
      or "Setup complete: runs with --backend modal will find codex in volume %s and the key in secret %s.",
      VOLUME, SECRET)
  os.exit(0)
end
io.stderr:write(("runbox setup: %d thing%s missing:\n"):format(#problems, #problems == 1 and " is" or "s are"))
for _, p in ipairs(problems) do io.stderr:write("  - ", p, "\n") end
os.exit(1)
