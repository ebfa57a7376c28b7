-- Cross-check of the stand-in Modal server with the official Modal JS SDK (modal@0.7.2, installed
-- by tests/deps.sh): tests/modal_sdk/sdk_flow.mjs runs the SDK's sandbox flow against the
-- stand-in and prints what it saw; this file checks it, and checks the stand-in's side (its
-- state, the volume's host folder, the calls and their headers). If the SDK cannot talk to the
-- stand-in, the stand-in is wrong.
local T = require "runbox.testing"
local proc = require "runbox.proc"
local json = require "runbox.json"
local fs = require "runbox.fs"

local root = (arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local standin = dofile(root .. "/tests/helpers/modal_standin/start.lua")
local MODAL_JS = os.getenv("RUNBOX_TEST_MODAL_JS_DIR") or "/opt/runbox-test/modal-js"
local SECRET_VALUE = "sdk-secret-value-7f3a"

local function sdk_installed()
  local pkg = json.decode_file(MODAL_JS .. "/node_modules/modal/package.json")
  if type(pkg) ~= "table" or pkg.version ~= "0.7.2" then
    error("the Modal JS SDK 0.7.2 is not installed in " .. MODAL_JS .. " (tests/deps.sh installs it)")
  end
end

-- Runs the SDK flow against srv; returns what it observed (decoded) and node's stderr.
local function run_flow(srv)
  sdk_installed()
  srv.secret("sdk-secret", {SDK_SECRET = SECRET_VALUE})
  local env = srv.env()
  env.RUNBOX_TEST_MODAL_JS_DIR = MODAL_JS
  env.MODAL_PROFILE, env.MODAL_CONFIG_PATH = false, "/nonexistent/modal.toml"
  local r = assert(proc.run{"node", root .. "/tests/modal_sdk/sdk_flow.mjs", env = env, timeout = 60})
  local out = json.decode(r.stdout:match("[^\n]*\n?$") or "")
  T.ok(type(out) == "table", "the flow printed no JSON:\n" .. r.stdout .. "\n" .. r.stderr)
  T.eq(out.error, nil, "the SDK flow failed: " .. tostring(out.error) .. "\n" .. tostring(out.stack)
       .. "\nnode stderr:\n" .. r.stderr .. "\nstand-in log:\n" .. srv.log())
  T.eq(r.code, 0)
  return out, r.stderr
end

local function find(list, pred)
  for _, v in ipairs(list) do if pred(v) then return v end end
end

-- What the SDK saw: the same in every run.
local function check_observed(out)
  T.eq(out.stdout, ("stdin:hello-stdin\nenv:%s:sandbox-env:exec-env:two\npwd:/app/work\n"):format(SECRET_VALUE))
  T.eq(out.stderr, "to-stderr\n")
  T.eq(out.exit_code, 3)
  T.eq(out.exit_code_zero, 0)
  T.eq(out.big_stdout_length, 300000)
  T.eq(out.big_exit_code, 0)
  T.match(out.app_id, "^ap%-")
  T.match(out.image_id, "^im%-")
  T.eq(out.image_id_again, out.image_id, "the same image definition gives the same image")
  T.match(out.failed_build_error, "status 7")
  T.match(out.missing_secret_error, "^NotFoundError")
  T.match(out.sandbox_id, "^sb%-")
  T.eq(out.tags, {flow = "sdk", run = "one"})
  T.eq(out.listed, {out.sandbox_id})
  T.eq(out.poll_running, json.null)
  T.eq(out.terminate_exit_code, 137)
  T.eq(out.poll_after_terminate, 137)
end

-- What the stand-in saw.
local function check_server_side(srv, out)
  local st = srv.state()
  local sb = find(st.sandboxes, function(s) return s.id == out.sandbox_id end)
  T.ok(sb, "the sandbox is in /admin/state")
  T.eq(sb.alive, false)
  T.eq(sb.status_name, "TERMINATED")
  T.eq(#sb.pids, 0)
  T.eq(sb.resources.milli_cpu, 1500)
  T.eq(sb.resources.memory_mb, 1024)
  T.eq(sb.timeout_secs, 600)
  T.eq(sb.workdir, "/app/work")
  T.eq(sb.volume_mounts[1].mount_path, "/data")
  T.eq(sb.volume_mounts[1].volume_id, out.volume_id)
  T.ok(find(sb.secret_ids, function(id) return id == out.secret_id end), "the named secret is mounted")
  T.eq(sb.env_keys, {"SB_ENV", "SDK_SECRET"})
  local vol = st.volumes["sdk-volume"]
  T.eq(vol.id, out.volume_id)
  T.eq(fs.read(vol.dir .. "/hello.txt"), "from-the-sandbox\n", "the file the sandbox wrote is on the volume")
  local text = json.encode(st)
  T.ok(not text:find(SECRET_VALUE, 1, true), "the secret's value is in /admin/state")
  -- the SDK's headers: the control plane with tokens and client type 8, the router with a JWT
  T.eq(st.calls[1].method, "AuthTokenGet")
  for _, c in ipairs(st.calls) do
    if c.service == "ModalClient" then
      T.eq(c.metadata["x-modal-client-type"], "8", c.method)
      T.eq(c.metadata["x-modal-libmodal-version"], "modal-js/0.7.2", c.method)
      T.eq(c.metadata["x-modal-token-secret"], "<set>", c.method)
    elseif c.service == "TaskCommandRouter" then
      T.eq(c.metadata.authorization, "<set>", c.method)
      T.eq(c.metadata["x-modal-token-id"], nil, c.method)
    end
  end
  local seen = {}
  for _, c in ipairs(st.calls) do seen[c.method] = (seen[c.method] or 0) + 1 end
  for _, m in ipairs{"AppGetOrCreate", "SecretGetOrCreate", "VolumeGetOrCreate", "ImageGetOrCreate",
                     "ImageJoinStreaming", "SandboxCreate", "SandboxGetTaskId", "TaskGetCommandRouterAccess",
                     "TaskExecStart", "TaskExecStdioRead", "TaskExecStdinWrite", "TaskExecWait",
                     "SandboxTagsSet", "SandboxList", "SandboxTerminate", "SandboxWait"} do
    T.ok(seen[m], "the SDK called " .. m)
  end
  return st
end

T.test("the official JS SDK runs its sandbox flow against the stand-in", function()
  local srv <close> = standin.start{}
  local out = run_flow(srv)
  check_observed(out)
  local st = check_server_side(srv, out)
  for _, c in ipairs(st.calls) do
    if c.code ~= "OK" then
      T.ok(c.method == "SecretGetOrCreate" and c.code == "NOT_FOUND" or c.code == "CANCELLED",
           ("unexpected %s from %s: %s"):format(c.code, c.method, tostring(c.message)))
    end
  end
  local pids = {srv.pid}
  srv.stop()
  for _, pid in ipairs(pids) do T.eq(T.pid_alive(pid), false) end
end, {timeout = 90})

T.test("the SDK gets through the stand-in's injected faults", function()
  -- router JWTs under 30 s: the SDK refreshes one on UNAUTHENTICATED only when it expires soon
  local srv <close> = standin.start{jwt_ttl = 20}
  srv.admin{method = "SandboxCreate", kind = "unavailable", count = 2}
  srv.admin{method = "TaskExecStdioRead", kind = "cut_stream", after = 1, count = 3}
  srv.admin{method = "TaskExecStart", kind = "unauthenticated", count = 1}
  local out = run_flow(srv)
  check_observed(out)
  local st = check_server_side(srv, out)
  local function count(method, code)
    local n = 0
    for _, c in ipairs(st.calls) do if c.method == method and c.code == code then n = n + 1 end end
    return n
  end
  T.eq(count("SandboxCreate", "UNAVAILABLE"), 2)
  T.eq(count("SandboxCreate", "OK"), 1)
  T.eq(count("TaskExecStdioRead", "UNAVAILABLE"), 3)
  T.eq(count("TaskExecStart", "UNAUTHENTICATED"), 1)
  T.eq(count("TaskGetCommandRouterAccess", "OK"), 2, "the SDK fetched a fresh JWT")
  srv.stop()
end, {timeout = 90})

T.run()
