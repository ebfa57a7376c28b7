-- A stand-in for the OpenAI Responses API, enough for codex 0.169.0 (see the project's codex notes):
-- POST /v1/responses answers with server-sent events: one output item, then response.completed
-- with usage. It is stateless: the number of tool outputs already in the request's input says
-- which step of the scenario comes next.
--
--   local standin = dofile("tests/helpers/responses_standin.lua")
--   local s = standin.start{steps = {{patch = "*** Begin Patch\n...\n*** End Patch\n"},
--                                    {message = "done"}},
--                           usage = {input = 100, output = 20}}
--   s.base_url, s.requests (list of {model, kind, auth}), s:close()
--
-- Also usable as a script: runbox tests/helpers/responses_standin.lua SCENARIO.json (prints the
-- base URL, serves until killed).
local httpd = require "runbox.httpd"
local json = require "runbox.json"
local sched = require "runbox.sched"

local M = {}

local function item_for(step, n)
  local id = "call_" .. n
  if step.shell then
    return {type = "function_call", call_id = id, name = "exec_command",
            arguments = json.encode{cmd = step.shell}}
  elseif step.patch then
    return {type = "custom_tool_call", call_id = id, name = "apply_patch", input = step.patch}
  end
  return {type = "message", role = "assistant", id = "msg_" .. n,
          content = {{type = "output_text", text = step.message or "done"}}}
end

local function tool_outputs(input)
  local n = 0
  for _, it in ipairs(type(input) == "table" and input or {}) do
    if it.type == "function_call_output" or it.type == "custom_tool_call_output" then n = n + 1 end
  end
  return n
end

local function event(res, name, data)
  return res:write("event: " .. name .. "\ndata: " .. json.encode(data) .. "\n\n")
end

function M.start(scenario)
  local self = {requests = {}, scenario = scenario}
  local function respond(req, res)
    local body = json.decode(req:body()) or {}
    local meta = json.decode(req.headers["x-codex-turn-metadata"] or "") or {}
    local kind = meta.request_kind or "turn"
    local n = tool_outputs(body.input)
    self.requests[#self.requests + 1] = {model = body.model, kind = kind, step = n + 1,
                                         auth = req.headers.authorization}
    if scenario.status then
      res:status(scenario.status):header("content-type", "application/json")
      return res:send(json.encode{error = {message = "stand-in error"}})
    end
    local steps = scenario.steps or {}
    local step = kind == "compaction" and {message = "summary"} or steps[n + 1] or {message = "done"}
    if step.delay then sched.sleep(step.delay) end
    local u = step.usage or scenario.usage or {input = 10, output = 5}
    local usage = {input_tokens = u.input, input_tokens_details = {cached_tokens = u.cached or 0},
                   output_tokens = u.output, output_tokens_details = {reasoning_tokens = u.reasoning or 0},
                   total_tokens = u.input + u.output}
    res:status(200):header("content-type", "text/event-stream"):header("cache-control", "no-cache")
    res:start()
    local rid = "resp_" .. #self.requests
    event(res, "response.created", {type = "response.created", response = {id = rid}})
    local item = item_for(step, #self.requests)
    event(res, "response.output_item.done", {type = "response.output_item.done", output_index = 0, item = item})
    event(res, "response.completed", {type = "response.completed", response = {id = rid, usage = usage}})
    res:finish()
  end
  local srv = assert(httpd.serve({host = scenario.host or "127.0.0.1", port = scenario.port or 0},
                                 httpd.router{["POST /v1/responses"] = respond}))
  self.server = srv
  self.base_url = srv.url .. "/v1"
  function self:close() srv:close{grace = 0} end
  return setmetatable(self, {__close = function(s) s:close() end})
end

-- As a script: serve the scenario in arg[1] until killed.
if arg and arg[0] and arg[0]:find("responses_standin%.lua$") and arg[1] then
  local fs = require "runbox.fs"
  local s = M.start(assert(json.decode(assert(fs.read(arg[1])))))
  print(s.base_url)
  io.stdout:flush()
  sched.event():wait()
end

return M
