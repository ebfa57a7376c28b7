-- The stand-in Modal server (tests/helpers/modal_standin) checked with raw runbox.grpc calls:
-- credentials, apps, secrets, image builds with their logs, volumes through block URLs,
-- sandboxes with execs, injected faults, and nothing left running once it stops.
local T = require "runbox.testing"
local grpc = require "runbox.grpc"
local pb = require "runbox.pb"
local http = require "runbox.http"
local json = require "runbox.json"
local util = require "runbox.util"
local fs = require "runbox.fs"
local sched = require "runbox.sched"

local root = (arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."
local standin = dofile(root .. "/tests/helpers/modal_standin/start.lua")

-- Our own schemas: the fields of Modal's messages (names and numbers as in modal.client and
-- modal.task_command_router) that these tests use.
local S = pb.schema{
  Empty = {},
  GenericResult = {{1, "status", "int32"}, {2, "exception", "string"}, {3, "exitcode", "int32"}},
  AppGetOrCreateRequest = {{1, "app_name", "string"}, {2, "environment_name", "string"},
                           {3, "object_creation_type", "int32"}},
  AppGetOrCreateResponse = {{1, "app_id", "string"}},
  AuthTokenGetResponse = {{1, "token", "string"}},
  SecretGetOrCreateRequest = {{1, "deployment_name", "string"}, {3, "environment_name", "string"},
                              {4, "object_creation_type", "int32"},
                              {5, "env_dict", "map", key = "string", value = "string"},
                              {7, "required_keys", "string", repeated = true}},
  SecretGetOrCreateResponse = {{1, "secret_id", "string"}},
  BaseImage = {{1, "image_id", "string"}, {2, "docker_tag", "string"}},
  Image = {{5, "base_images", "BaseImage", repeated = true},
           {6, "dockerfile_commands", "string", repeated = true}},
  ImageGetOrCreateRequest = {{2, "image", "Image"}, {4, "app_id", "string"},
                             {9, "builder_version", "string"}},
  ImageGetOrCreateResponse = {{1, "image_id", "string"}, {2, "result", "GenericResult"}},
  TaskLogs = {{1, "data", "string"}, {8, "file_descriptor", "int32"}},
  ImageJoinStreamingRequest = {{1, "image_id", "string"}, {2, "timeout", "float"},
                               {3, "last_entry_id", "string"}},
  ImageJoinStreamingResponse = {{1, "result", "GenericResult"}, {2, "task_logs", "TaskLogs", repeated = true},
                                {3, "entry_id", "string"}, {4, "eof", "bool"}},
  VolumeMetadata = {{1, "version", "int32"}, {2, "name", "string"}},
  VolumeGetOrCreateRequest = {{1, "deployment_name", "string"}, {3, "environment_name", "string"},
                              {4, "object_creation_type", "int32"}},
  VolumeGetOrCreateResponse = {{1, "volume_id", "string"}, {3, "metadata", "VolumeMetadata"}},
  Block = {{1, "contents_sha256", "bytes"}, {2, "put_response", "bytes", optional = true}},
  File = {{1, "path", "string"}, {2, "size", "uint64"}, {3, "blocks", "Block", repeated = true},
          {4, "mode", "uint32", optional = true}},
  VolumePutFiles2Request = {{1, "volume_id", "string"}, {2, "files", "File", repeated = true},
                            {3, "disallow_overwrite_existing_files", "bool"}},
  MissingBlock = {{1, "file_index", "uint64"}, {2, "block_index", "uint64"}, {3, "put_url", "string"}},
  VolumePutFiles2Response = {{1, "missing_blocks", "MissingBlock", repeated = true}},
  VolumeGetFile2Request = {{1, "volume_id", "string"}, {2, "path", "string"}, {3, "start", "uint64"},
                           {4, "len", "uint64"}},
  VolumeGetFile2Response = {{1, "get_urls", "string", repeated = true}, {2, "size", "uint64"}},
  VolumeListFiles2Request = {{1, "volume_id", "string"}, {2, "path", "string"}, {4, "recursive", "bool"}},
  FileEntry = {{1, "path", "string"}, {2, "type", "int32"}, {3, "mtime", "uint64"}, {4, "size", "uint64"}},
  VolumeListFiles2Response = {{1, "entries", "FileEntry", repeated = true}},
  Resources = {{2, "memory_mb", "uint32"}, {3, "milli_cpu", "uint32"}},
  VolumeMount = {{1, "volume_id", "string"}, {2, "mount_path", "string"},
                 {3, "allow_background_commits", "bool"}, {4, "read_only", "bool"}},
  NetworkAccess = {{1, "network_access_type", "int32"}},
  Sandbox = {{1, "entrypoint_args", "string", repeated = true}, {3, "image_id", "string"},
             {4, "secret_ids", "string", repeated = true}, {5, "resources", "Resources"},
             {7, "timeout_secs", "uint32"}, {8, "workdir", "string", optional = true},
             {13, "volume_mounts", "VolumeMount", repeated = true}, {22, "network_access", "NetworkAccess"}},
  SandboxTag = {{1, "tag_name", "string"}, {2, "tag_value", "string"}},
  SandboxCreateRequest = {{1, "app_id", "string"}, {2, "definition", "Sandbox"},
                          {4, "tags", "SandboxTag", repeated = true}},
  SandboxCreateResponse = {{1, "sandbox_id", "string"}},
  SandboxGetTaskIdRequest = {{1, "sandbox_id", "string"}},
  SandboxGetTaskIdResponse = {{1, "task_id", "string", optional = true},
                              {2, "task_result", "GenericResult"}},
  TaskGetCommandRouterAccessRequest = {{1, "task_id", "string"}},
  TaskGetCommandRouterAccessResponse = {{1, "jwt", "string"}, {2, "url", "string"}},
  SandboxWaitRequest = {{1, "sandbox_id", "string"}, {2, "timeout", "float"}},
  SandboxWaitResponse = {{1, "result", "GenericResult"}},
  SandboxTerminateRequest = {{1, "sandbox_id", "string"}},
  SandboxTerminateResponse = {{1, "existing_result", "GenericResult"}},
  SandboxInfo = {{1, "id", "string"}, {5, "app_id", "string"}, {6, "tags", "SandboxTag", repeated = true}},
  SandboxListRequest = {{1, "app_id", "string"}, {4, "include_finished", "bool"},
                        {5, "tags", "SandboxTag", repeated = true}},
  SandboxListResponse = {{1, "sandboxes", "SandboxInfo", repeated = true}},
  TaskExecStartRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"},
                          {3, "command_args", "string", repeated = true}, {4, "stdout_config", "int32"},
                          {5, "stderr_config", "int32"}, {6, "timeout_secs", "uint32", optional = true},
                          {7, "workdir", "string", optional = true},
                          {8, "secret_ids", "string", repeated = true},
                          {12, "env", "map", key = "string", value = "string"}},
  TaskExecStdioReadRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"}, {3, "offset", "uint64"},
                              {4, "file_descriptor", "int32"}},
  TaskExecStdioReadResponse = {{1, "data", "bytes"}},
  TaskExecStdinWriteRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"}, {3, "offset", "uint64"},
                               {4, "data", "bytes"}, {5, "eof", "bool"}},
  TaskExecIdRequest = {{1, "task_id", "string"}, {2, "exec_id", "string"}},
  TaskExecWaitResponse = {{1, "code", "int32", oneof = "exit_status"},
                          {2, "signal", "int32", oneof = "exit_status"}},
  Any = {{1, "type_url", "string"}, {2, "value", "bytes"}},
  RPCStatus = {{1, "code", "int32"}, {2, "message", "string"}, {3, "details", "Any", repeated = true}},
  RPCRetryPolicy = {{1, "retry_after_secs", "float"}},
}

local CP = "/modal.client.ModalClient/"
local R = "/modal.task_command_router.TaskCommandRouter/"
local SUCCESS, FAILURE, TERMINATED, INTERNAL_FAILURE = 1, 2, 3, 6

-- One server for the whole file (stopped by the last test).
local srv = standin.start{}
local cp = grpc.channel(srv.grpc_url, {timeout = 30, metadata = {
  ["x-modal-token-id"] = srv.token_id, ["x-modal-token-secret"] = srv.token_secret}})

local function call(method, req, reqs, resps, opts)
  opts = opts or {}
  local ch = opts.channel or cp
  return ch:unary((opts.router and R or CP) .. method, req,
                  {request = S[reqs], response = S[resps], metadata = opts.metadata})
end

local function must(method, req, reqs, resps, opts)
  local resp, err = call(method, req, reqs, resps, opts)
  if not resp then error(method .. ": " .. tostring(err), 2) end
  return resp
end

local function is_status(err, status)
  T.ok(err and err.grpc_status, "expected a gRPC error, got " .. tostring(err))
  T.eq(err.grpc_status, status, tostring(err))
end

local function hex_to_bytes(h) return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end)) end

local app_id
local function app()
  app_id = app_id or must("AppGetOrCreate", {app_name = "standin-test", object_creation_type = 1},
                          "AppGetOrCreateRequest", "AppGetOrCreateResponse").app_id
  return app_id
end

-- Builds a layer and waits for its result through ImageJoinStreaming; returns image id, result, log.
local function build(commands, base_id)
  local req = {app_id = app(), builder_version = "2024.10",
               image = {dockerfile_commands = commands,
                        base_images = base_id and {{image_id = base_id, docker_tag = "base"}} or nil}}
  local resp = must("ImageGetOrCreate", req, "ImageGetOrCreateRequest", "ImageGetOrCreateResponse")
  if resp.result and resp.result.status ~= 0 then return resp.image_id, resp.result, "", resp end
  local log, last, result = {}, "", nil
  while not result do
    local c = assert(cp:server_stream(CP .. "ImageJoinStreaming",
                                      {image_id = resp.image_id, timeout = 55, last_entry_id = last},
                                      {request = S.ImageJoinStreamingRequest, response = S.ImageJoinStreamingResponse}))
    for m in c:messages() do
      if m.entry_id ~= "" then last = m.entry_id end
      for _, l in ipairs(m.task_logs) do log[#log + 1] = l.data end
      if m.result and m.result.status ~= 0 then result = m.result end
    end
  end
  return resp.image_id, result, table.concat(log), resp, last
end

local base_image
local function image()
  if not base_image then
    local id, result = build({"FROM python:3.11-slim"})
    T.eq(result.status, SUCCESS)
    base_image = id
  end
  return base_image
end

local function sandbox(extra)
  local def = {image_id = image(), timeout_secs = 60, resources = {milli_cpu = 500, memory_mb = 256},
               network_access = {network_access_type = 1}}
  for k, v in pairs(extra or {}) do def[k] = v end
  local resp = must("SandboxCreate", {app_id = app(), definition = def, tags = extra and extra.tags},
                    "SandboxCreateRequest", "SandboxCreateResponse")
  local t = must("SandboxGetTaskId", {sandbox_id = resp.sandbox_id}, "SandboxGetTaskIdRequest",
                 "SandboxGetTaskIdResponse")
  return resp.sandbox_id, t.task_id
end

local function router(task_id)
  local acc = must("TaskGetCommandRouterAccess", {task_id = task_id}, "TaskGetCommandRouterAccessRequest",
                   "TaskGetCommandRouterAccessResponse")
  -- the SDKs connect plaintext to an https router URL on 127.0.0.1
  local url = acc.url:gsub("^https://", "http://")
  return grpc.channel(url, {timeout = 30, metadata = {authorization = "Bearer " .. acc.jwt}}), acc
end

local function exec(rt, task_id, argv, extra)
  local req = {task_id = task_id, exec_id = util.uuid(), command_args = argv, stdout_config = 1,
               stderr_config = 1}
  for k, v in pairs(extra or {}) do req[k] = v end
  must("TaskExecStart", req, "TaskExecStartRequest", "Empty", {router = true, channel = rt})
  return req.exec_id
end

-- Reads an exec's stdout (fd 0) or stderr (fd 1) from offset to the end; returns data, err.
local function read_fd(rt, task_id, exec_id, fd, offset)
  local c, err = rt:server_stream(R .. "TaskExecStdioRead",
                                  {task_id = task_id, exec_id = exec_id, offset = offset or 0, file_descriptor = fd},
                                  {request = S.TaskExecStdioReadRequest, response = S.TaskExecStdioReadResponse})
  if not c then return "", err end
  local parts = {}
  while true do
    local m, rerr = c:recv()
    if not m then return table.concat(parts), rerr, #parts end
    T.ok(#m.data > 0 and #m.data <= 64 * 1024, "chunk size " .. #m.data)
    parts[#parts + 1] = m.data
  end
end

local function wait_exec(rt, task_id, exec_id)
  return must("TaskExecWait", {task_id = task_id, exec_id = exec_id}, "TaskExecIdRequest",
              "TaskExecWaitResponse", {router = true, channel = rt})
end

local function find(list, pred)
  for _, v in ipairs(list) do if pred(v) then return v end end
end

---------------------------------------------------------------------------------------------------

T.test("control-plane calls need the configured token id and secret", function()
  local bare = grpc.channel(srv.grpc_url, {timeout = 10})
  local _, err = bare:unary(CP .. "AppGetOrCreate", {app_name = "x"}, {request = S.AppGetOrCreateRequest,
                                                                      response = S.AppGetOrCreateResponse})
  is_status(err, "UNAUTHENTICATED")
  T.match(err.grpc_message, "x%-modal%-token%-id")
  local wrong = grpc.channel(srv.grpc_url, {timeout = 10, metadata = {
    ["x-modal-token-id"] = srv.token_id, ["x-modal-token-secret"] = "as-wrong"}})
  _, err = wrong:unary(CP .. "ClientHello", "", {response = S.Empty})
  is_status(err, "UNAUTHENTICATED")
  must("ClientHello", {}, "Empty", "Empty")
  -- the call log keeps headers but never the secret's value
  local st = srv.state()
  local hello = find(st.calls, function(c) return c.method == "ClientHello" and c.code == "OK" end)
  T.eq(hello.metadata["x-modal-token-id"], srv.token_id)
  T.eq(hello.metadata["x-modal-token-secret"], "<set>")
  T.ok(not json.encode(st):find("as-wrong", 1, true), "a secret value is in /admin/state")
  T.ok(find(st.calls, function(c) return c.code == "UNAUTHENTICATED" end))
end)

T.test("AuthTokenGet gives a JWT whose payload standard base64 decodes, with exp", function()
  local tok = must("AuthTokenGet", {}, "Empty", "AuthTokenGetResponse").token
  local payload = tok:match("^[^.]+%.([^.]+)%.[^.]+$")
  T.ok(payload and not payload:find("[-_+/=]"), tok)
  local claims = json.decode(util.base64_decode(payload .. ("="):rep((4 - #payload % 4) % 4)))
  T.ok(claims.exp > os.time() + 600)
end)

T.test("apps and secrets: create, look up, required keys, ephemeral", function()
  local id = app()
  T.match(id, "^ap%-")
  T.eq(must("AppGetOrCreate", {app_name = "standin-test"}, "AppGetOrCreateRequest", "AppGetOrCreateResponse").app_id, id)
  local _, err = call("AppGetOrCreate", {app_name = "no-such-app"}, "AppGetOrCreateRequest", "AppGetOrCreateResponse")
  is_status(err, "NOT_FOUND")

  local sec = must("SecretGetOrCreate", {deployment_name = "api-keys", object_creation_type = 2,
                                         env_dict = {API_KEY = "sk-very-secret"}},
                   "SecretGetOrCreateRequest", "SecretGetOrCreateResponse").secret_id
  T.match(sec, "^st%-")
  _, err = call("SecretGetOrCreate", {deployment_name = "api-keys", object_creation_type = 2, env_dict = {A = "1"}},
                "SecretGetOrCreateRequest", "SecretGetOrCreateResponse")
  is_status(err, "ALREADY_EXISTS")
  T.eq(must("SecretGetOrCreate", {deployment_name = "api-keys", required_keys = {"API_KEY"}},
            "SecretGetOrCreateRequest", "SecretGetOrCreateResponse").secret_id, sec)
  _, err = call("SecretGetOrCreate", {deployment_name = "api-keys", required_keys = {"API_KEY", "OTHER"}},
                "SecretGetOrCreateRequest", "SecretGetOrCreateResponse")
  is_status(err, "FAILED_PRECONDITION")
  T.match(err.grpc_message, "Secret is missing key")
  _, err = call("SecretGetOrCreate", {deployment_name = "nope"}, "SecretGetOrCreateRequest", "SecretGetOrCreateResponse")
  is_status(err, "NOT_FOUND")
  local eph = must("SecretGetOrCreate", {object_creation_type = 5, env_dict = {TOKEN = "t-123"}},
                   "SecretGetOrCreateRequest", "SecretGetOrCreateResponse").secret_id
  T.ne(eph, sec)
  local st = srv.state()
  T.eq(st.secrets["api-keys"], {"API_KEY"})
  T.eq(st.ephemeral_secrets[eph], {"TOKEN"})
  local text = json.encode(st)
  T.ok(not text:find("sk-very-secret", 1, true) and not text:find("t-123", 1, true), "a secret value leaked")
end)

T.test("an image layer with a RUN line streams its build log, resumable by entry id", function()
  local base = image()
  local cmds = {"FROM base", "RUN echo built-by-run && echo run-stderr >&2", "ENV LAYER=two"}
  local id, result, log, first, last = build(cmds, base)
  T.eq(first.result, nil, "the build was not finished in the ImageGetOrCreate answer")
  T.eq(result.status, SUCCESS)
  T.match(log, "built%-by%-run")
  T.match(log, "run%-stderr")
  T.match(log, "RUN echo built%-by%-run")
  -- resuming after the last entry gives no log again, only the result
  local c = assert(cp:server_stream(CP .. "ImageJoinStreaming", {image_id = id, timeout = 5, last_entry_id = last},
                                    {request = S.ImageJoinStreamingRequest, response = S.ImageJoinStreamingResponse}))
  local msgs = {}
  for m in c:messages() do msgs[#msgs + 1] = m end
  T.eq(#msgs, 1)
  T.eq(#msgs[1].task_logs, 0)
  T.eq(msgs[1].result.status, SUCCESS)
  T.eq(msgs[1].eof, true)
  -- the same definition: the same image, finished at once
  local again = must("ImageGetOrCreate", {app_id = app(), builder_version = "2024.10",
                                          image = {dockerfile_commands = cmds, base_images = {{image_id = base, docker_tag = "base"}}}},
                     "ImageGetOrCreateRequest", "ImageGetOrCreateResponse")
  T.eq(again.image_id, id)
  T.eq(again.result.status, SUCCESS)
end)

T.test("a failing RUN line makes the build FAILURE with its log", function()
  local id, result, log = build({"FROM base", "RUN echo about-to-fail; exit 3"}, image())
  T.match(id, "^im%-")
  T.eq(result.status, FAILURE)
  T.match(result.exception, "status 3")
  T.match(log, "about%-to%-fail")
  local _, err = call("ImageGetOrCreate", {app_id = app(), image = {dockerfile_commands = {"RUN true"}}},
                      "ImageGetOrCreateRequest", "ImageGetOrCreateResponse")
  is_status(err, "INVALID_ARGUMENT")
end)

T.test("volumes: put files through block URLs (trailing zeros), list, get, host folder", function()
  local v = must("VolumeGetOrCreate", {deployment_name = "standin-vol", object_creation_type = 1},
                 "VolumeGetOrCreateRequest", "VolumeGetOrCreateResponse")
  T.match(v.volume_id, "^vo%-")
  T.eq(v.metadata.version, 2)
  local BLOCK = 8 * 1024 * 1024
  local big = ("b"):rep(BLOCK - 3) .. "\0\0\0" .. "tail" .. ("\0"):rep(10)   -- 2 blocks
  local small = "hello volume\n"
  local function blocks(data)
    local out = {}
    for i = 1, #data, BLOCK do
      local piece = data:sub(i, i + BLOCK - 1):gsub("%z+$", "")
      out[#out + 1] = {body = piece, sha = hex_to_bytes(util.sha256(piece))}
    end
    return out
  end
  local files = {{path = "dir/big.bin", data = big}, {path = "small.txt", data = small}, {path = "empty", data = ""}}
  local req = {volume_id = v.volume_id, files = {}}
  local bodies = {}
  for i, f in ipairs(files) do
    local bl = blocks(f.data)
    bodies[i] = bl
    local pbl = {}
    for j, b in ipairs(bl) do pbl[j] = {contents_sha256 = b.sha} end
    req.files[i] = {path = f.path, size = #f.data, blocks = pbl, mode = 420}
  end
  local resp = must("VolumePutFiles2", req, "VolumePutFiles2Request", "VolumePutFiles2Response")
  T.eq(#resp.missing_blocks, 3)
  -- a body that is not the block is refused
  local bad = assert(http.request{url = resp.missing_blocks[1].put_url, method = "PUT", body = "wrong", timeout = 10})
  T.eq(bad.status, 400)
  for _, mb in ipairs(resp.missing_blocks) do
    local b = bodies[mb.file_index + 1][mb.block_index + 1]
    local put = assert(http.request{url = mb.put_url, method = "PUT", body = b.body, timeout = 30})
    T.eq(put.status, 200)
    req.files[mb.file_index + 1].blocks[mb.block_index + 1].put_response = put.body
  end
  resp = must("VolumePutFiles2", req, "VolumePutFiles2Request", "VolumePutFiles2Response")
  T.eq(#resp.missing_blocks, 0)
  local st = srv.state()
  local dir = st.volumes["standin-vol"].dir
  T.eq(fs.read(dir .. "/dir/big.bin") == big, true, "big.bin on the host folder")
  T.eq(fs.read(dir .. "/small.txt"), small)
  T.eq(fs.read(dir .. "/empty"), "")
  -- list
  local c = assert(cp:server_stream(CP .. "VolumeListFiles2", {volume_id = v.volume_id, path = "/", recursive = true},
                                    {request = S.VolumeListFiles2Request, response = S.VolumeListFiles2Response}))
  local seen = {}
  for m in c:messages() do for _, e in ipairs(m.entries) do seen[e.path] = e end end
  T.eq(seen["dir/big.bin"].size, #big)
  T.eq(seen["dir/big.bin"].type, 1)
  T.eq(seen["dir"].type, 2)
  T.eq(seen["small.txt"].size, #small)
  -- get through the block URLs
  local g = must("VolumeGetFile2", {volume_id = v.volume_id, path = "dir/big.bin"}, "VolumeGetFile2Request",
                 "VolumeGetFile2Response")
  T.eq(g.size, #big)
  T.eq(#g.get_urls, 2)
  local parts = {}
  for i, url in ipairs(g.get_urls) do parts[i] = assert(http.get(url, {timeout = 30})).body end
  T.eq(table.concat(parts) == big, true, "downloaded blocks equal the file")
  local _, err = call("VolumeGetFile2", {volume_id = v.volume_id, path = "missing"}, "VolumeGetFile2Request",
                      "VolumeGetFile2Response")
  is_status(err, "NOT_FOUND")
  -- the same files again: nothing is missing
  for _, f in ipairs(req.files) do for _, b in ipairs(f.blocks) do b.put_response = nil end end
  T.eq(#must("VolumePutFiles2", req, "VolumePutFiles2Request", "VolumePutFiles2Response").missing_blocks, 0)
  req.disallow_overwrite_existing_files = true
  _, err = call("VolumePutFiles2", req, "VolumePutFiles2Request", "VolumePutFiles2Response")
  is_status(err, "ALREADY_EXISTS")
  -- block URLs can fail on request too (HTTP 503), and a URL the server did not sign is refused
  srv.admin{method = "BlockGet", kind = "unavailable", count = 1}
  T.eq(assert(http.get(g.get_urls[1], {timeout = 30})).status, 503)
  T.eq(assert(http.get(g.get_urls[1], {timeout = 30})).status, 200)
  T.eq(assert(http.get((g.get_urls[1]:gsub("sig=%x+", "sig=00")), {timeout = 30})).status, 403)
  srv.admin(nil)
end)

T.test("the admin API refuses a fault it does not know", function()
  srv.admin(nil)
  T.raises("fault kind", srv.admin, {method = "SandboxCreate", kind = "explode"})
  T.raises("needs \"method\"", srv.admin, {kind = "unavailable"})
  T.raises("unknown gRPC status code name", srv.admin, {method = "X", kind = "status", code = "NOPE"})
  T.eq(srv.state().faults, {})
end)

T.test("sandbox: create, exec with stdin/stdout/stderr/exit code, list, terminate", function()
  local sec = must("SecretGetOrCreate", {object_creation_type = 5, env_dict = {SB_SECRET = "from-secret"}},
                   "SecretGetOrCreateRequest", "SecretGetOrCreateResponse").secret_id
  local vol = must("VolumeGetOrCreate", {deployment_name = "standin-vol", object_creation_type = 1},
                   "VolumeGetOrCreateRequest", "VolumeGetOrCreateResponse").volume_id
  local sb, task = sandbox{workdir = "/app/work", secret_ids = {sec},
                           volume_mounts = {{volume_id = vol, mount_path = "/data", allow_background_commits = true}},
                           tags = {{tag_name = "batch", tag_value = "b1"}, {tag_name = "run", tag_value = "r1"}}}
  T.match(sb, "^sb%-")
  T.match(task, "^ta%-")
  local w = must("SandboxWait", {sandbox_id = sb, timeout = 0}, "SandboxWaitRequest", "SandboxWaitResponse")
  T.eq(w.result, nil, "no result while running")
  local rt, acc = router(task)
  T.match(acc.url, "^https://127%.0%.0%.1:%d+$")
  T.eq(select(2, acc.jwt:gsub("%.", "")), 2, "a 3-part JWT")

  local id = exec(rt, task, {"sh", "-c", "cat; echo \"pwd=$(pwd) secret=$SB_SECRET x=$X\"; "
                                          .. "cat /data/small.txt; echo to-stderr >&2; exit 5"},
                  {env = {X = "exec-env"}})
  must("TaskExecStdinWrite", {task_id = task, exec_id = id, offset = 0, data = "line one\n"},
       "TaskExecStdinWriteRequest", "Empty", {router = true, channel = rt})
  -- a retried write of the same bytes is skipped
  must("TaskExecStdinWrite", {task_id = task, exec_id = id, offset = 0, data = "line one\n"},
       "TaskExecStdinWriteRequest", "Empty", {router = true, channel = rt})
  must("TaskExecStdinWrite", {task_id = task, exec_id = id, offset = 9, data = "", eof = true},
       "TaskExecStdinWriteRequest", "Empty", {router = true, channel = rt})
  local out = read_fd(rt, task, id, 0)
  T.eq(out, "line one\npwd=/app/work secret=from-secret x=exec-env\nhello volume\n")
  T.eq(read_fd(rt, task, id, 1), "to-stderr\n")
  T.eq(read_fd(rt, task, id, 0, 9), "pwd=/app/work secret=from-secret x=exec-env\nhello volume\n")
  local ws = wait_exec(rt, task, id)
  T.eq(ws.exit_status, "code")
  T.eq(ws.code, 5)
  -- exit code 0 is on the wire (oneof presence)
  local ok_id = exec(rt, task, {"true"})
  local zero = wait_exec(rt, task, ok_id)
  T.eq(zero.exit_status, "code")
  T.eq(zero.code, 0)
  -- a second exec sees the same /app
  local w1 = exec(rt, task, {"sh", "-c", "echo shared > /app/work/f.txt"})
  wait_exec(rt, task, w1)
  local r1 = exec(rt, task, {"cat", "f.txt"})
  T.eq(read_fd(rt, task, r1, 0), "shared\n")

  local list = must("SandboxList", {app_id = app(), tags = {{tag_name = "batch", tag_value = "b1"}}},
                    "SandboxListRequest", "SandboxListResponse")
  T.eq(#list.sandboxes, 1)
  T.eq(list.sandboxes[1].id, sb)
  T.eq(#list.sandboxes[1].tags, 2)
  T.eq(#must("SandboxList", {app_id = app(), tags = {{tag_name = "batch", tag_value = "other"}}},
             "SandboxListRequest", "SandboxListResponse").sandboxes, 0)

  local st = srv.state()
  local info = find(st.sandboxes, function(s) return s.id == sb end)
  T.eq(info.alive, true)
  T.eq(info.tags, {batch = "b1", run = "r1"})
  T.eq(info.resources.milli_cpu, 500)
  T.eq(info.workdir, "/app/work")
  T.eq(info.volume_mounts[1].mount_path, "/data")
  T.ok(#info.pids >= 1)
  local pids = info.pids

  local term = must("SandboxTerminate", {sandbox_id = sb}, "SandboxTerminateRequest", "SandboxTerminateResponse")
  T.eq(term.existing_result, nil)
  w = must("SandboxWait", {sandbox_id = sb, timeout = 10}, "SandboxWaitRequest", "SandboxWaitResponse")
  T.eq(w.result.status, TERMINATED)
  local t = must("SandboxGetTaskId", {sandbox_id = sb}, "SandboxGetTaskIdRequest", "SandboxGetTaskIdResponse")
  T.eq(t.task_result.status, TERMINATED)
  for _, pid in ipairs(pids) do T.eq(T.pid_alive(pid), false, "pid " .. pid .. " still runs") end
  info = find(srv.state().sandboxes, function(s) return s.id == sb end)
  T.eq(info.alive, false)
  T.eq(info.status, TERMINATED)
  local _, err = call("TaskExecStart", {task_id = task, exec_id = util.uuid(), command_args = {"true"}},
                      "TaskExecStartRequest", "Empty", {router = true, channel = rt})
  is_status(err, "NOT_FOUND")
end)

T.test("router calls need the JWT of their task", function()
  local _, task = sandbox()
  local _, err = cp:unary(R .. "TaskExecPoll", {task_id = task, exec_id = "x"},
                          {request = S.TaskExecIdRequest, response = S.TaskExecWaitResponse})
  is_status(err, "UNAUTHENTICATED")
  local _, other = sandbox()
  local rt = router(other)
  _, err = call("TaskExecStart", {task_id = task, exec_id = util.uuid(), command_args = {"true"}},
                "TaskExecStartRequest", "Empty", {router = true, channel = rt})
  is_status(err, "PERMISSION_DENIED")
end)

T.test("a retried SandboxCreate (same x-idempotency-key) gives the same sandbox", function()
  local req = {app_id = app(), definition = {image_id = image(), timeout_secs = 30}}
  local key = util.uuid()
  local a = must("SandboxCreate", req, "SandboxCreateRequest", "SandboxCreateResponse",
                 {metadata = {["x-idempotency-key"] = key}})
  local b = must("SandboxCreate", req, "SandboxCreateRequest", "SandboxCreateResponse",
                 {metadata = {["x-idempotency-key"] = key, ["x-retry-attempt"] = "1"}})
  T.eq(b.sandbox_id, a.sandbox_id)
  local c = must("SandboxCreate", req, "SandboxCreateRequest", "SandboxCreateResponse",
                 {metadata = {["x-idempotency-key"] = util.uuid()}})
  T.ne(c.sandbox_id, a.sandbox_id)
end)

T.test("a method the stand-in does not serve is UNIMPLEMENTED and recorded", function()
  local _, err = cp:unary(CP .. "SandboxSnapshotFs", "", {response = S.Empty})
  is_status(err, "UNIMPLEMENTED")
  local st = srv.state()
  T.ok(find(st.calls, function(c) return c.method == "SandboxSnapshotFs" and c.code == "UNIMPLEMENTED" end))
end)

T.test("faults: UNAVAILABLE for the first N calls, a status, slow answers", function()
  srv.admin{method = "AppGetOrCreate", kind = "unavailable", count = 2}
  local req = {app_name = "standin-test", object_creation_type = 1}
  for _ = 1, 2 do
    local _, err = call("AppGetOrCreate", req, "AppGetOrCreateRequest", "AppGetOrCreateResponse")
    is_status(err, "UNAVAILABLE")
  end
  T.eq(must("AppGetOrCreate", req, "AppGetOrCreateRequest", "AppGetOrCreateResponse").app_id, app())
  srv.admin{method = "ClientHello", kind = "status", code = "INTERNAL", count = 1}
  local _, err = call("ClientHello", {}, "Empty", "Empty")
  is_status(err, "INTERNAL")
  srv.admin{method = "ClientHello", kind = "slow", seconds = 0.3, count = 1}
  local t0 = sched.now()
  must("ClientHello", {}, "Empty", "Empty")
  T.ok(sched.now() - t0 >= 0.28, "slow answer")
  srv.admin(nil)
end)

T.test("faults: a stdout stream cut mid-way resumes from its offset", function()
  local _, task = sandbox()
  local rt = router(task)
  local id = exec(rt, task, {"sh", "-c", "head -c 300000 /dev/zero | tr '\\0' y"})
  wait_exec(rt, task, id)
  srv.admin{method = "TaskExecStdioRead", kind = "cut_stream", after = 2, count = 1}
  local first, err, n = read_fd(rt, task, id, 0)
  is_status(err, "UNAVAILABLE")
  T.eq(n, 2)
  T.eq(#first, 2 * 64 * 1024)
  local rest = read_fd(rt, task, id, 0, #first)
  T.eq(#first + #rest, 300000)
  T.eq((first .. rest):match("^y+$") ~= nil, true)
end)

T.test("faults: creation rate limit answers RESOURCE_EXHAUSTED with a retry policy", function()
  srv.admin{method = "SandboxCreate", kind = "rate_limit", per_second = 1}
  sandbox()
  local _, err = call("SandboxCreate", {app_id = app(), definition = {image_id = image()}},
                      "SandboxCreateRequest", "SandboxCreateResponse")
  is_status(err, "RESOURCE_EXHAUSTED")
  local st = pb.decode(S.RPCStatus, err.metadata["grpc-status-details-bin"])
  T.eq(st.details[1].type_url, "type.googleapis.com/modal.client.RPCRetryPolicy")
  local policy = pb.decode(S.RPCRetryPolicy, st.details[1].value)
  T.ok(policy.retry_after_secs > 0 and policy.retry_after_secs <= 1, tostring(policy.retry_after_secs))
  sched.sleep(policy.retry_after_secs + 0.05)
  sandbox()
  srv.admin(nil)
end)

T.test("faults: UNAUTHENTICATED on a router call revokes the JWT until access is fetched again", function()
  local _, task = sandbox()
  local rt = router(task)
  local id = exec(rt, task, {"true"})
  srv.admin{method = "TaskExecWait", kind = "unauthenticated", count = 1}
  local _, err = call("TaskExecWait", {task_id = task, exec_id = id}, "TaskExecIdRequest", "TaskExecWaitResponse",
                      {router = true, channel = rt})
  is_status(err, "UNAUTHENTICATED")
  _, err = call("TaskExecPoll", {task_id = task, exec_id = id}, "TaskExecIdRequest", "TaskExecWaitResponse",
                {router = true, channel = rt})
  is_status(err, "UNAUTHENTICATED")
  local fresh = router(task)
  T.eq(wait_exec(fresh, task, id).code, 0)
end)

T.test("faults: a sandbox that dies mid-run", function()
  srv.admin{kind = "sandbox_dies", after = 0.3}
  local sb, task = sandbox()
  local rt = router(task)
  local id = exec(rt, task, {"sleep", "30"})
  local w = must("SandboxWait", {sandbox_id = sb, timeout = 10}, "SandboxWaitRequest", "SandboxWaitResponse")
  T.eq(w.result.status, INTERNAL_FAILURE)
  local ws = wait_exec(rt, task, id)
  T.eq(ws.exit_status, "signal")
  T.eq(ws.signal, 9)
  srv.admin(nil)
end)

T.test("a sandbox's timeout ends it with TIMEOUT", function()
  local sb = sandbox{timeout_secs = 1}
  local w = must("SandboxWait", {sandbox_id = sb, timeout = 10}, "SandboxWaitRequest", "SandboxWaitResponse")
  T.eq(w.result.status, 4)
end)

T.test("stop() leaves no process running", function()
  local _, task = sandbox()
  local rt = router(task)
  exec(rt, task, {"sleep", "60"})
  sandbox()
  local pids = {srv.pid}
  for _, s in ipairs(srv.state().sandboxes) do
    for _, pid in ipairs(s.pids) do pids[#pids + 1] = pid end
  end
  T.ok(#pids >= 4, "pids: " .. #pids)
  local dir = srv.state_dir
  srv.stop()
  for _, pid in ipairs(pids) do T.eq(T.pid_alive(pid), false, "pid " .. pid .. " still runs") end
  -- nor anything else whose command line names the state folder
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:match("^%d+$") then
      local cmdline = fs.read("/proc/" .. name .. "/cmdline") or ""
      T.ok(not cmdline:find(dir, 1, true) or not T.pid_alive(tonumber(name)), "process " .. name .. " remains")
    end
  end
end)

T.run()
