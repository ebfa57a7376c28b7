-- `runbox setup` and `runbox fetch` through the real binary against the stand-in Modal server
-- (tests/helpers/modal_standin): the codex upload (a small fake installation with the real
-- layout; the real 404 MB one is only resolved, in a dry run), the secret, what is missing, and
-- run folders listed and downloaded from the volume codex-artifacts, faults included.
local T = require "runbox.testing"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"
local modal = require "runbox.modal"

local SRC = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
local BIN = T.runbox_bin()
local standin = dofile(SRC .. "/tests/helpers/modal_standin/start.lua")
local REAL_CODEX = "/opt/runbox-test/codex"
local NATIVE = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
local KEY = "sk-setup-test-" .. ("q7"):rep(16)

T.timeout = 30

local S, HOME, WORK   -- the stand-in, an empty home (no ~/.modal.toml), scratch space

local function server()
  if not S then
    HOME = assert(fs.temp_dir("setup-fetch-home"))
    WORK = assert(fs.realpath(assert(fs.temp_dir("setup-fetch"))))
    S = standin.start{build_run = "skip"}
  end
  return S
end

-- Runs `runbox ARGS...` in dir with a clean environment: the stand-in's credentials, no key,
-- PATH without codex; env adds or (false) removes variables. Returns the proc result.
local function runbox(dir, argv, env)
  local e = {HOME = HOME, PATH = "/usr/bin:/bin", OPENAI_API_KEY = false, MODAL_PROFILE = false,
             MODAL_CONFIG_PATH = false, MODAL_ENVIRONMENT = false}
  for k, v in pairs(server().env()) do e[k] = v end
  for k, v in pairs(env or {}) do e[k] = v end
  local cmd = {BIN}
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  cmd.cwd, cmd.env, cmd.timeout = dir, e, 60
  return assert(proc.run(cmd))
end

local function client(environment)
  local e = server().env()
  e.MODAL_ENVIRONMENT = environment
  return assert(modal.client{env = e, home = HOME})
end

local function ncalls() return #server().state().calls end
local function calls(method, from)
  local out = {}
  for i, c in ipairs(server().state().calls) do
    if i > from and c.method == method then out[#out + 1] = c end
  end
  return out
end

local function no_key(r, key)
  key = key or KEY
  T.ok(not r.stdout:find(key, 1, true), "the key is not on stdout")
  T.ok(not r.stderr:find(key, 1, true), "the key is not on stderr")
  -- nor any 8 characters of it
  for i = 1, #key - 7 do
    local piece = key:sub(i, i + 7)
    if (r.stdout .. r.stderr):find(piece, 1, true) then T.ok(false, "a piece of the key was printed: " .. piece) end
  end
end

local function new_dir(name)
  server()
  local d = WORK .. "/" .. name
  assert(fs.mkdir_p(d))
  return d
end

-- A 64-bit x86-64 ELF header (what a Modal sandbox runs), then n bytes of filler.
local function elf(n, salt)
  local head = "\127ELF\2\1\1\0" .. ("\0"):rep(8) .. "\2\0\62\0"
  local chunk = ("codex native %s "):format(salt or ""):rep(64)
  return head .. chunk:rep(n // #chunk + 1):sub(1, n)
end

-- A fake global npm installation with codex's layout: PREFIX/bin/codex ->
-- ../lib/node_modules/@openai/codex/bin/codex.js, the native binary (6 MB) in the
-- codex-linux-x64 package next to it, and another package of the prefix that is not uploaded.
local function fake_codex(dir, opts)
  opts = opts or {}
  local lib = dir .. "/prefix/lib"
  local scope = lib .. "/node_modules/@openai"
  local vendor = scope .. "/codex-linux-x64/vendor/x86_64-unknown-linux-musl"
  for _, d in ipairs{scope .. "/codex/bin", vendor .. "/bin", vendor .. "/codex-path", lib .. "/node_modules/left-pad",
                     dir .. "/prefix/bin"} do
    assert(fs.mkdir_p(d))
  end
  fs.write(scope .. "/codex/package.json", json.encode{name = "@openai/codex", version = "9.8.7", bin = {codex = "bin/codex.js"}})
  fs.write(scope .. "/codex/bin/codex.js", "#!/usr/bin/env node\nconsole.log('codex wrapper')\n")
  fs.chmod(scope .. "/codex/bin/codex.js", tonumber("755", 8))
  fs.write(scope .. "/codex-linux-x64/package.json", '{"name": "@openai/codex", "version": "9.8.7-linux-x64"}\n')
  fs.write(vendor .. "/bin/codex", opts.native or elf(6 * 1024 * 1024 + 12345))
  fs.chmod(vendor .. "/bin/codex", tonumber("755", 8))
  fs.write(vendor .. "/codex-path/rg", elf(40000, "rg"))
  fs.chmod(vendor .. "/codex-path/rg", tonumber("755", 8))
  fs.write(lib .. "/node_modules/left-pad/package.json", "{}\n")
  fs.symlink("../lib/node_modules/@openai/codex/bin/codex.js", dir .. "/prefix/bin/codex")
  return {lib = lib, bin_dir = dir .. "/prefix/bin", vendor = vendor}
end

local CODEX    -- the fake installation of the default environment's tests
local function codex()
  if not CODEX then CODEX = fake_codex(new_dir("codex")) end
  return CODEX
end

local function volume_file(vol, path)
  return server().state_dir .. "/volumes/" .. vol.id .. "/" .. path
end

---------------------------------------------------------------------------------------------------
-- runbox setup

T.test("setup on a clean Modal: volume and secret created, manifest right, the key never shown", function()
  local inst = codex()
  local dir = new_dir("setup-clean")
  local r = runbox(dir, {"setup"}, {PATH = inst.bin_dir .. ":/usr/bin:/bin", OPENAI_API_KEY = KEY})
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.match(r.stdout, "%[ok%] codex: " .. inst.bin_dir:gsub("%p", "%%%0") .. "/codex %-> ")
  T.match(r.stdout, "npm installation in " .. inst.lib:gsub("%p", "%%%0") .. ": 5 files")
  T.match(r.stdout, "version 9%.8%.7")
  T.match(r.stdout, "executable: " .. NATIVE:gsub("%p", "%%%0"))
  T.match(r.stdout, "%[ok%] volume codex%-installation created")
  T.match(r.stdout, "%[ok%] manifest runbox%-codex%.json written")
  T.match(r.stdout, "%[ok%] secret openai%-api%-keys created from OPENAI_API_KEY in the environment")
  T.match(r.stdout, "Setup complete")
  T.match(r.stderr, "codex%-installation  100%%  6%.1 MiB / 6%.1 MiB  [%d.]+ [KMG]?i?B/s  in %d+:%d%d\n",
          "the progress line (plain: not a terminal)")
  no_key(r)

  local st = server().state()
  T.eq(st.secrets["openai-api-keys"], {"OPENAI_API_KEY"})
  T.ok(not json.encode(st):find(KEY, 1, true), "the stand-in never saw the key in a recorded place")
  T.ok(not server().log():find(KEY, 1, true))
  local vol = assert(client():volume("codex-installation"))
  local manifest = assert(json.decode(assert(vol:read("runbox-codex.json"))))
  T.eq(manifest.bin, NATIVE)
  T.eq(manifest.version, "9.8.7")
  T.eq(manifest.kind, "npm")
  T.eq(manifest.files, 5)
  T.match(manifest.uploaded_at, "^%d%d%d%d%-%d%d%-%d%dT")
  -- the tree as the sandbox sees it at /codex: the native binary whole and executable
  T.eq(fs.read(volume_file(vol, NATIVE)), fs.read(inst.vendor .. "/bin/codex"))
  T.eq(fs.stat(volume_file(vol, NATIVE)).mode & 73, 73)
  T.ok(fs.exists(volume_file(vol, "node_modules/@openai/codex/bin/codex.js")))
  T.ok(not fs.exists(volume_file(vol, "node_modules/left-pad")), "other packages of the prefix stay home")
end)

T.test("setup again sends nothing; a changed file sends its block, a removed one goes; --force", function()
  local inst = codex()
  local dir = new_dir("setup-again")
  local env = {PATH = inst.bin_dir .. ":/usr/bin:/bin", OPENAI_API_KEY = KEY}
  local from = ncalls()
  local r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.eq(#calls("BlockPut", from), 0, "no block uploaded again")
  T.ok(#calls("VolumePutFiles2", from) >= 1, "the block protocol was asked")
  T.match(r.stdout, "5 files %(6%.1 MiB%) in place, nothing sent %(unchanged%)")
  T.match(r.stdout, "manifest runbox%-codex%.json unchanged")
  T.match(r.stdout, "secret openai%-api%-keys exists %(kept; %-%-force replaces it%)")
  for _, c in ipairs(calls("SecretGetOrCreate", from)) do
    T.eq(c.request.object_creation_type or 0, 0, "only looked up")
  end

  -- an updated installation: rg changed, the wrapper's README gone
  fs.write(inst.vendor .. "/codex-path/rg", elf(40000, "rg v2"))
  fs.write(inst.lib .. "/node_modules/@openai/codex/README.md", "readme\n")
  r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 0, r.stderr)
  fs.remove(inst.lib .. "/node_modules/@openai/codex/README.md")
  from = ncalls()
  r = runbox(dir, {"setup", "--force"}, env)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  -- at most the manifest's block: the files are unchanged (the manifest itself may match one
  -- already stored, made within the same second: blocks are stored by content)
  T.ok(#calls("BlockPut", from) <= 1, "only the manifest's block: " .. #calls("BlockPut", from))
  T.match(r.stdout, "removed 1 files of an older installation")
  T.match(r.stdout, "secret openai%-api%-keys replaced from OPENAI_API_KEY")
  no_key(r)
  local vol = assert(client():volume("codex-installation"))
  T.ok(not fs.exists(volume_file(vol, "node_modules/@openai/codex/README.md")))
  T.eq(fs.read(volume_file(vol, "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/codex-path/rg")),
       elf(40000, "rg v2"))
end)

T.test("setup with no key: where it looked and how to give one; .env and --env-file", function()
  local inst = codex()
  local dir = new_dir("setup-nokey")
  local env = {PATH = inst.bin_dir .. ":/usr/bin:/bin", MODAL_ENVIRONMENT = "nokey"}
  local r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 1, r.stdout .. r.stderr)
  T.match(r.stdout, "%[ok%] volume codex%-installation", "codex is uploaded all the same")
  T.match(r.stderr, "1 thing is missing")
  T.match(r.stderr, "openai%-api%-keys: no OPENAI_API_KEY found: looked in the environment and in "
          .. dir:gsub("%p", "%%%0") .. "/%.env %(no such file%); export OPENAI_API_KEY=%.%.%., or put OPENAI_API_KEY=%.%.%. in %./%.env")
  r = runbox(dir, {"setup", "--env-file", "keys.env"}, env)
  T.eq(r.code, 1)
  T.match(r.stderr, "%-%-env%-file keys%.env: no such file")
  fs.write(dir .. "/.env", "# keys\nOTHER=1\n")
  r = runbox(dir, {"setup"}, env)
  T.match(r.stderr, "/%.env %(not in it%)")
  local key2 = "sk-from-dotenv-" .. ("z3"):rep(12)
  fs.write(dir .. "/.env", "export OPENAI_API_KEY='" .. key2 .. "'\n")
  r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.match(r.stdout, "secret openai%-api%-keys created from OPENAI_API_KEY in %.env")
  no_key(r, key2)
  assert(client("nokey"):secret_from_name("openai-api-keys", {required_keys = {"OPENAI_API_KEY"}}))
  -- the secret is there now: no key is needed to keep it
  fs.remove(dir .. "/.env")
  r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "secret openai%-api%-keys exists %(kept")
  r = runbox(dir, {"setup", "--force"}, env)
  T.eq(r.code, 1)
  T.match(r.stderr, "openai%-api%-keys: no OPENAI_API_KEY found")
end)

T.test("setup with a secret that lacks the key: replaced only with --force", function()
  local inst = codex()
  local dir = new_dir("setup-partial")
  server().secret("openai-api-keys", {OTHER_KEY = "other-value"}, "partial")
  local env = {PATH = inst.bin_dir .. ":/usr/bin:/bin", MODAL_ENVIRONMENT = "partial", OPENAI_API_KEY = KEY}
  local r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 1)
  T.match(r.stderr, "openai%-api%-keys: the secret openai%-api%-keys exists but has no OPENAI_API_KEY: "
          .. "run `runbox setup %-%-force` with OPENAI_API_KEY set to replace it")
  r = runbox(dir, {"setup", "--force"}, env)
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "secret openai%-api%-keys replaced")
  assert(client("partial"):secret_from_name("openai-api-keys", {required_keys = {"OPENAI_API_KEY"}}))
  no_key(r)
end)

T.test("setup with no codex, a codex Modal cannot run, a standalone binary", function()
  local dir = new_dir("setup-nocodex")
  fs.mkdir_p(dir .. "/empty-bin")
  local env = {PATH = dir .. "/empty-bin", OPENAI_API_KEY = KEY, MODAL_ENVIRONMENT = "nocodex"}
  local r = runbox(dir, {"setup"}, env)
  T.eq(r.code, 1, r.stdout .. r.stderr)
  T.match(r.stderr, "codex: codex is not on PATH: install it with `npm install %-g @openai/codex`, or point at it with %-%-codex%-bin PATH")
  T.match(r.stdout, "%[ok%] secret openai%-api%-keys created", "the secret is made all the same")
  no_key(r)
  r = runbox(dir, {"setup", "--codex-bin", dir .. "/nope"}, env)
  T.match(r.stderr, "%-%-codex%-bin " .. dir:gsub("%p", "%%%0") .. "/nope: no such file")
  fs.write(dir .. "/codex.sh", "#!/bin/sh\necho codex\n")
  r = runbox(dir, {"setup", "--codex-bin", dir .. "/codex.sh"}, env)
  T.eq(r.code, 1)
  T.match(r.stderr, "codex%.sh is neither a Linux x86%-64 executable .* nor part of an npm installation of @openai/codex")
  -- an npm installation made on a Mac: no Linux build in it
  local mac = fake_codex(new_dir("mac-codex"), {native = "\207\250\237\254" .. ("m"):rep(100)})
  r = runbox(dir, {"setup", "--codex-bin", mac.bin_dir .. "/codex"}, env)
  T.eq(r.code, 1)
  T.match(r.stderr, "has no Linux x86%-64 executable")
  -- a standalone binary is uploaded alone
  fs.write(dir .. "/codex-x86_64-unknown-linux-musl", elf(3000, "standalone"))
  fs.chmod(dir .. "/codex-x86_64-unknown-linux-musl", tonumber("755", 8))
  r = runbox(dir, {"setup", "--codex-bin", dir .. "/codex-x86_64-unknown-linux-musl"}, env)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.match(r.stdout, "standalone binary in " .. dir:gsub("%p", "%%%0") .. ": 1 files")
  local vol = assert(client("nocodex"):volume("codex-installation"))
  T.eq(assert(json.decode(assert(vol:read("runbox-codex.json")))).bin, "bin/codex")
  T.eq(assert(vol:read("bin/codex")), elf(3000, "standalone"))
end)

T.test("setup survives failing block PUTs and an UNAVAILABLE VolumePutFiles2", function()
  local inst = fake_codex(new_dir("codex-faulty"), {native = elf(2 * 1024 * 1024, "faulty")})
  local s = server()
  s.admin{method = "BlockPut", kind = "unavailable", count = 2}
  s.admin{method = "VolumePutFiles2", kind = "unavailable", count = 1}
  local r = runbox(new_dir("setup-faulty"), {"setup"}, {PATH = inst.bin_dir .. ":/usr/bin:/bin", OPENAI_API_KEY = KEY,
                                                        MODAL_ENVIRONMENT = "faulty"})
  local st = s.state()
  s.admin(nil)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  for _, f in ipairs(st.faults) do T.eq(f.remaining, 0, f.method .. " " .. f.kind .. " happened") end
  local vol = assert(client("faulty"):volume("codex-installation"))
  T.eq(fs.read(volume_file(vol, NATIVE)), elf(2 * 1024 * 1024, "faulty"))
end)

T.test("setup without Modal credentials, or with a refused token: what to do", function()
  local inst = codex()
  local dir = new_dir("setup-nocreds")
  local r = runbox(dir, {"setup"}, {PATH = inst.bin_dir .. ":/usr/bin:/bin", OPENAI_API_KEY = KEY,
                                    MODAL_TOKEN_ID = false, MODAL_TOKEN_SECRET = false})
  T.eq(r.code, 1, r.stdout .. r.stderr)
  T.match(r.stderr, "Modal: Modal credentials are missing .*MODAL_TOKEN_ID and MODAL_TOKEN_SECRET.*`modal token new`")
  T.match(r.stderr, "nothing was uploaded or created")
  T.match(r.stdout, "%[ok%] codex:", "codex was still looked for")
  no_key(r)
  r = runbox(dir, {"setup"}, {PATH = inst.bin_dir .. ":/usr/bin:/bin", OPENAI_API_KEY = KEY, MODAL_TOKEN_SECRET = "as-wrong"})
  T.eq(r.code, 1)
  T.match(r.stderr, "Modal: .*UNAUTHENTICATED.*`modal token new`")
  no_key(r)
end)

T.test("the real codex installation is resolved (dry run: nothing uploaded)", function()
  if not fs.exists(REAL_CODEX .. "/node_modules/@openai/codex/package.json") then
    error("codex not installed at " .. REAL_CODEX .. " (tests/deps.sh installs it)")
  end
  local version = assert(json.decode_file(REAL_CODEX .. "/node_modules/@openai/codex/package.json")).version
  local dir = new_dir("setup-real")
  local from = ncalls()
  local r = runbox(dir, {"setup", "--dry-run", "--codex-bin", REAL_CODEX .. "/node_modules/.bin/codex"},
                   {OPENAI_API_KEY = KEY, MODAL_ENVIRONMENT = "dry"})
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.match(r.stdout, "%-> " .. REAL_CODEX:gsub("%p", "%%%0") .. "/node_modules/@openai/codex/bin/codex%.js")
  T.match(r.stdout, "npm installation in " .. REAL_CODEX:gsub("%p", "%%%0") .. ": %d+ files, %d+%.%d MiB, version "
          .. version:gsub("%p", "%%%0"))
  T.match(r.stdout, "executable: " .. NATIVE:gsub("%p", "%%%0") .. "\n")
  T.match(r.stdout, "%[would%] create volume codex%-installation and upload")
  T.match(r.stdout, "%[would%] create secret openai%-api%-keys")
  T.eq(#calls("VolumePutFiles2", from), 0)
  T.eq(#calls("BlockPut", from), 0)
  for _, c in ipairs(calls("VolumeGetOrCreate", from)) do T.eq(c.request.object_creation_type or 0, 0) end
  for _, c in ipairs(calls("SecretGetOrCreate", from)) do T.eq(c.request.object_creation_type or 0, 0) end
  no_key(r)
end)

---------------------------------------------------------------------------------------------------
-- runbox fetch

local BIG = ("0123456789abcdef"):rep(5 * 1024 * 1024 // 16) .. "tail"
local RESULTS = {run_id = "r-done", status = "completed", score = 0.75, tests = {passed = 3, failed = 1},
                 end_time = "2026-01-02T03:04:05Z"}
local COMPLETION = {completed = true, run_id = "modal_20250821_190000_1a2b3c4d", agent_exit_code = 0,
                    timestamp = "2025-08-21T19:00:00", evaluation_results = {evaluation = {total_score = 0.5}}}

local STORED
local function artifacts()
  if STORED then return end
  local vol = assert(client():volume("codex-artifacts", {create = true}))
  assert(vol:put_bytes(json.encode(RESULTS), "r-done/results.json"))
  assert(vol:put_bytes("diff --git a/x b/x\n", "r-done/diff.patch"))
  assert(vol:put_bytes("agent said hi\n", "r-done/logs/agent.log"))
  assert(vol:put_bytes(BIG, "r-done/big.bin"))
  assert(vol:put_bytes(json.encode(COMPLETION), "modal_20250821_190000_1a2b3c4d/completion.json"))
  assert(vol:put_bytes("+ bootstrap\n", "modal_20250821_190000_1a2b3c4d/bootstrap.log"))
  assert(vol:put_bytes("no status here\n", "r-nostatus/notes.txt"))
  assert(vol:put_bytes("{}", "tb_evaluation_results.json"))
  STORED = true
end

T.test("fetch list: every run with its status, as a table", function()
  artifacts()
  local r = runbox(new_dir("list"), {"fetch", "list"})
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "3 runs in Modal volume codex%-artifacts:")
  T.match(r.stdout, "RUN_ID%s+STATUS%s+SCORE%s+TESTS%s+FILES%s+SIZE%s+MODIFIED")
  T.match(r.stdout, "\nmodal_20250821_190000_1a2b3c4d%s+completed%s+50%%%s+%-%s+2%s")
  T.match(r.stdout, "\nr%-done%s+completed%s+75%%%s+3/4%s+4%s+5%.0 MiB%s")
  T.match(r.stdout, "\nr%-nostatus%s+%-%s+%-%s+%-%s+1%s")
  T.match(r.stdout, "at the volume's root %(not part of a run%): tb_evaluation_results%.json")
  -- no volume, an empty one
  r = runbox(new_dir("list-none"), {"fetch", "list"}, {MODAL_ENVIRONMENT = "novolume"})
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "Modal volume codex%-artifacts does not exist yet: no runs stored")
  assert(client("emptyvol"):volume("codex-artifacts", {create = true}))
  r = runbox(new_dir("list-empty"), {"fetch", "list"}, {MODAL_ENVIRONMENT = "emptyvol"})
  T.match(r.stdout, "holds no runs yet")
end)

T.test("fetch RUN_ID into an empty folder: no extra level, the status shown", function()
  artifacts()
  local dir = new_dir("fetch-empty")
  local r = runbox(dir, {"fetch", "r-done"})
  T.eq(r.code, 0, r.stdout .. r.stderr)
  local run = dir .. "/data/runs/r-done"
  T.eq(json.decode_file(run .. "/results.json"), RESULTS)
  T.eq(fs.read(run .. "/logs/agent.log"), "agent said hi\n")
  T.eq(fs.read(run .. "/big.bin"), BIG)
  T.ok(not fs.exists(run .. "/r-done"), "no nested run folder")
  T.eq(#fs.list(run), 4, "results.json, diff.patch, logs, big.bin and nothing else")
  T.match(r.stdout, "Fetched 4 files %(5%.0 MiB%)")
  T.match(r.stdout, "Run status: completed, score 75%%, tests 3 passed, 1 failed, at 2026%-01%-02T03:04:05Z %(from results%.json%)")
  T.match(r.stderr, "fetch r%-done  100%%  5%.0 MiB / 5%.0 MiB", "a progress line for a big download")
  -- the original runner's layout: completion.json; a small download has no progress line
  r = runbox(dir, {"fetch", "modal_20250821_190000_1a2b3c4d/"})
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "Run status: completed, score 50%%, at 2025%-08%-21T19:00:00 %(from completion%.json%)")
  T.ok(fs.exists(dir .. "/data/runs/modal_20250821_190000_1a2b3c4d/bootstrap.log"))
  T.eq(r.stderr, "")
  r = runbox(dir, {"fetch", "r-nostatus", "-o", "elsewhere"})
  T.eq(r.code, 0, r.stderr)
  T.eq(fs.read(dir .. "/elsewhere/notes.txt"), "no status here\n")
  T.match(r.stdout, "Run status: unknown")
end)

T.test("fetch refuses to overwrite without --force, and overwrites with it", function()
  artifacts()
  local dir = new_dir("fetch-force")
  T.eq(runbox(dir, {"fetch", "r-done"}).code, 0)
  local run = dir .. "/data/runs/r-done"
  fs.write(run .. "/diff.patch", "my local edit\n")
  fs.write(run .. "/mine.txt", "not from the volume\n")
  local r = runbox(dir, {"fetch", "r-done"})
  T.eq(r.code, 1, r.stdout)
  T.match(r.stderr, "runbox fetch: data/runs/r%-done/[%w./]+ already exists %(and 3 more of the run's files%): "
          .. "nothing was downloaded; use %-%-force to overwrite")
  T.eq(fs.read(run .. "/diff.patch"), "my local edit\n", "untouched")
  r = runbox(dir, {"fetch", "r-done", "--force"})
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "overwrote 4")
  T.eq(fs.read(run .. "/diff.patch"), "diff --git a/x b/x\n")
  T.eq(fs.read(run .. "/mine.txt"), "not from the volume\n", "other local files are kept")
end)

T.test("fetch of an unknown run lists what exists (or says there is nothing)", function()
  artifacts()
  local dir = new_dir("fetch-unknown")
  local r = runbox(dir, {"fetch", "r-nope"})
  T.eq(r.code, 1)
  T.match(r.stderr, "run 'r%-nope' is not in Modal volume codex%-artifacts%. Runs there: "
          .. "modal_20250821_190000_1a2b3c4d, r%-done, r%-nostatus %(see runbox fetch list%)")
  T.ok(not fs.exists(dir .. "/data"), "nothing made")
  r = runbox(dir, {"fetch", "tb_evaluation_results.json"})
  T.eq(r.code, 1)
  T.match(r.stderr, "is a file at the root of Modal volume codex%-artifacts, not a run folder")
  r = runbox(dir, {"fetch", "r-nope"}, {MODAL_ENVIRONMENT = "emptyvol2"})
  T.eq(r.code, 1)
  T.match(r.stderr, "Modal volume codex%-artifacts does not exist yet")
  assert(client("emptyvol2"):volume("codex-artifacts", {create = true}))
  r = runbox(dir, {"fetch", "r-nope"}, {MODAL_ENVIRONMENT = "emptyvol2"})
  T.match(r.stderr, "the volume holds no runs yet")
end)

T.test("fetch: usage errors exit 2", function()
  local dir = new_dir("fetch-usage")
  local r = runbox(dir, {"fetch"})
  T.eq(r.code, 2)
  T.match(r.stderr, "missing list|RUN_ID")
  T.match(r.stderr, "usage: runbox fetch list | runbox fetch RUN_ID")
  r = runbox(dir, {"fetch", "list", "--bogus"})
  T.eq(r.code, 2)
  T.match(r.stderr, "unknown flag '%-%-bogus'")
  r = runbox(dir, {"fetch", "list", "--force"})
  T.eq(r.code, 2)
  r = runbox(dir, {"fetch", "../etc"})
  T.eq(r.code, 2)
  T.match(r.stderr, "'%.%./etc' is not a run id")
  r = runbox(dir, {"fetch", "--help"})
  T.eq(r.code, 0)
  T.match(r.stdout, "%-o, %-%-output DIR")
end)

T.test("fetch survives a cut listing, UNAVAILABLE and failing block GETs; a lasting fault leaves no partial file", function()
  artifacts()
  local s = server()
  local dir = new_dir("fetch-faults")
  s.admin{method = "VolumeListFiles2", kind = "cut_stream", after = 0, count = 1}
  s.admin{method = "VolumeGetFile2", kind = "unavailable", count = 2}
  s.admin{method = "BlockGet", kind = "unavailable", count = 2}
  local from = ncalls()
  local r = runbox(dir, {"fetch", "r-done"})
  local st = s.state()
  s.admin(nil)
  T.eq(r.code, 0, r.stdout .. r.stderr)
  T.eq(fs.read(dir .. "/data/runs/r-done/big.bin"), BIG)
  T.eq(json.decode_file(dir .. "/data/runs/r-done/results.json"), RESULTS)
  for _, f in ipairs(st.faults) do T.eq(f.remaining, 0, f.method .. " " .. f.kind .. " happened") end
  local failed = {}
  for _, m in ipairs{"VolumeListFiles2", "VolumeGetFile2"} do
    for _, c in ipairs(calls(m, from)) do
      if c.code ~= "OK" then failed[m] = (failed[m] or 0) + 1 end
    end
  end
  T.eq(failed.VolumeListFiles2, 1, "the listing was cut once")
  T.eq(failed.VolumeGetFile2, 2)
  -- a block that cannot be had: the run is not half-written under its real names
  s.admin{method = "BlockGet", kind = "status", http_status = 403, count = 100}
  local dir2 = new_dir("fetch-faults-2")
  r = runbox(dir2, {"fetch", "r-done"})
  s.admin(nil)
  T.eq(r.code, 1)
  T.match(r.stderr, "downloading run r%-done failed at .*HTTP status 403")
  for _, e in ipairs(assert(fs.walk(dir2))) do
    T.ok(not e.path:find("runbox-part", 1, true), "left behind: " .. e.path)
    if e.type == "file" then T.ok(false, "a file was written: " .. e.path) end
  end
end)

local ok, err = pcall(T.run)
if S then S.stop() end
if HOME then fs.remove_tree(HOME) end
if WORK then fs.remove_tree(WORK) end
if not ok then error(err, 0) end
