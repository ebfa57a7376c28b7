-- Modal images: a registry tag plus layers of Dockerfile commands, built with one
-- ImageGetOrCreate per layer (each names its parent as "base"), then ImageJoinStreaming until the
-- build has a result. The build log arrives live (on_log) and the stream resumes after its last
-- entry id when it is cut. A failed build is an error carrying the log.
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local schema = require "runbox.modal.schema"
local client = require "runbox.modal.client"

local M = {}

M.BUILDER_VERSION = "2024.10"    -- as the JS SDK when neither MODAL_IMAGE_BUILDER_VERSION nor the profile sets one
M.JOIN_TIMEOUT = 55              -- seconds the server may hold ImageJoinStreaming
M.JOIN_RETRIES = 10              -- transport errors tolerated while following one build
M.LOG_TAIL = 64 * 1024           -- bytes of build log kept for the error of a failed build

local SUCCESS = schema.S.GenericStatus.GENERIC_STATUS_SUCCESS

local function status_num(result)
  return result and schema.enum_number("GenericStatus", result.status) or 0
end

-- The last lines of a log, for messages.
local function last_lines(text, n)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    lines[#lines + 1] = line
    if #lines > n then table.remove(lines, 1) end
  end
  return table.concat(lines, "\n")
end

local function new_log()
  return {parts = {}, size = 0}
end

local function log_add(log, text)
  log.parts[#log.parts + 1] = text
  log.size = log.size + #text
  if log.size > 2 * M.LOG_TAIL then
    local all = table.concat(log.parts)
    all = all:sub(-M.LOG_TAIL)
    log.parts, log.size = {all}, #all
  end
end

local function log_text(log) return table.concat(log.parts) end

-- Follows the build of image_id to its result. Returns the result, or nil, err.
local function join(conn, image_id, on_log, log)
  local last_entry_id, failures, delay = "", 0, 0.1
  local result
  while true do
    local call, err, gerr = conn:stream("ImageJoinStreaming",
      {image_id = image_id, timeout = M.JOIN_TIMEOUT, last_entry_id = last_entry_id},
      {timeout = M.JOIN_TIMEOUT + 30})
    local cut = false
    if call then
      while true do
        local msg, rerr = call:recv()
        if msg then
          if msg.entry_id ~= "" then last_entry_id = msg.entry_id end
          for _, tl in ipairs(msg.task_logs) do
            if tl.data ~= "" then
              log_add(log, tl.data)
              if on_log then on_log(tl.data, tl.file_descriptor) end
            end
          end
          if status_num(msg.result) ~= 0 then result = msg.result end
          failures, delay = 0, 0.1
        elseif rerr then
          gerr, cut = rerr, true
          break
        else
          break
        end
      end
      call:close()
    else
      gerr, cut = gerr or err, true
    end
    if result then return result end
    if cut then
      failures = failures + 1
      if not (gerr.grpc_code and client.RETRYABLE[gerr.grpc_code]) or failures > M.JOIN_RETRIES then
        if errors.is(gerr, "grpc") then
          return nil, client.error("ImageJoinStreaming", gerr, {attempts = failures,
                                   hint = ("following the build of image %s"):format(image_id)})
        end
        return nil, gerr
      end
      sched.sleep(delay)
      delay = math.min(delay * 2, 2)
    end
  end
end

-- Builds one layer. Returns the image id, or nil, err.
local function build_layer(conn, app_id, image, opts, n, log)
  local resp, err = conn:unary("ImageGetOrCreate", {
    image = image, app_id = app_id, builder_version = opts.builder_version, namespace = 1,
    force_build = opts.force_build or false, ignore_cache = opts.ignore_cache or false,
  })
  if not resp then return nil, err end
  local result = resp.result
  if status_num(result) == 0 then
    result, err = join(conn, resp.image_id, opts.on_log, log)
    if not result then return nil, err end
  end
  if status_num(result) ~= SUCCESS then
    local text = log_text(log)
    local tail = last_lines(text, 20)
    local what = table.concat(image.dockerfile_commands, "; ")
    local msg = ("Modal image build failed (%s, layer %d: %s): %s"):format(schema.status_word(result.status), n,
      what:sub(1, 300), result.exception ~= "" and result.exception or "no reason given")
    if tail ~= "" then msg = msg .. "\nlast lines of the build log:\n" .. tail end
    return nil, errors.new("modal", msg, {reason = "build_failed", log = text, image_id = resp.image_id,
                                          exception = result.exception, layer = n})
  end
  return resp.image_id
end

local function check_lines(lines, what)
  if type(lines) ~= "table" then error(("modal image: %s must be a list of Dockerfile lines"):format(what), 4) end
  for i, l in ipairs(lines) do
    if type(l) ~= "string" then error(("modal image: %s[%d] must be a string"):format(what, i), 4) end
  end
end

-- Builds an image. spec: registry (a tag such as "python:3.11-slim"; or base = an image id or
-- image object to build on), commands (Dockerfile lines of one more layer), layers (a list of
-- such lists, one layer each), secret_ids (build-time secrets of the command layers), on_log
-- (function(text, fd) called with the build output as it comes), force_build, ignore_cache,
-- builder_version. Returns {id =, layers = {ids}} or nil, err.
function M.build(conn, app_id, spec, defaults)
  defaults = defaults or {}
  local layers = {}
  if spec.commands then check_lines(spec.commands, "commands"); layers[#layers + 1] = spec.commands end
  for i, l in ipairs(spec.layers or {}) do check_lines(l, "layers[" .. i .. "]"); layers[#layers + 1] = l end
  if spec.on_log ~= nil and type(spec.on_log) ~= "function" then error("modal image: on_log must be a function", 3) end
  local opts = {
    builder_version = spec.builder_version or defaults.builder_version or M.BUILDER_VERSION,
    force_build = spec.force_build or defaults.force_build, ignore_cache = spec.ignore_cache or defaults.ignore_cache,
    on_log = spec.on_log,
  }
  local log = new_log()
  local ids = {}
  local parent = spec.base
  if type(parent) == "table" then parent = parent.id end
  if not parent then
    if type(spec.registry) ~= "string" or spec.registry == "" then
      error("modal image: give registry (an image tag such as \"debian:bookworm-slim\") or base (an image)", 3)
    end
    local id, err = build_layer(conn, app_id, {dockerfile_commands = {"FROM " .. spec.registry}, gpu_config = {}},
                                opts, 1, log)
    if not id then return nil, err end
    parent = id
    ids[1] = id
  end
  for _, lines in ipairs(layers) do
    local cmds = {"FROM base"}
    for _, l in ipairs(lines) do cmds[#cmds + 1] = l end
    local id, err = build_layer(conn, app_id, {
      base_images = {{image_id = parent, docker_tag = "base"}}, dockerfile_commands = cmds,
      secret_ids = spec.secret_ids or {}, gpu_config = {},
    }, opts, #ids + 1, log)
    if not id then return nil, err end
    parent = id
    ids[#ids + 1] = id
  end
  return {id = parent, layers = ids}
end

return M
