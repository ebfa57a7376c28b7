-- An optional LLM judge for rubrics that have no test script: one chat completion on an
-- OpenAI-compatible endpoint ($OPENAI_BASE_URL, default https://api.openai.com/v1) with the task's
-- instructions, the rubric criteria and the agent's diff, asking for strict JSON scores.
--
--   local lm = judge.run{model = "gpt-4o-mini", instructions = t.instructions,
--                        rubrics = eval.untested(t.rubrics, t.test_scripts), diff = diff_text}
--   if lm.error then ... end      -- a failed judge is recorded, never replaced by made-up scores
--
-- The API key ($OPENAI_API_KEY) goes only into the Authorization header; it is never logged and is
-- scrubbed from anything the judge records (an endpoint that echoes it back cannot leak it).
local http = require "runbox.http"
local json = require "runbox.json"

local M = {}

M.defaults = {
  base_url = "https://api.openai.com/v1",
  timeout = 120,        -- seconds for the whole request
  max_diff = 60000,     -- bytes of the diff sent; the rest is cut with a marker
  json_mode = true,     -- ask for response_format {"type": "json_object"}
}

local SYSTEM = [[You are a strict, fair reviewer grading the change an AI coding agent made to a repository.
Grade each rubric independently from the evidence in the diff. Reply with one JSON object and nothing else.]]

-- The diff cut to max bytes at a line boundary, with a marker saying how much was left out.
function M.truncate(diff, max)
  if #diff <= max then return diff, false end
  local cut = diff:sub(1, max)
  local nl = cut:match(".*()\n")
  if nl and nl > max // 2 then cut = cut:sub(1, nl) end
  if cut:sub(-1) ~= "\n" then cut = cut .. "\n" end
  return cut .. ("[... diff truncated by runbox: %d of %d bytes shown ...]\n"):format(#cut, #diff), true
end

local function fence(text)
  local longest = 2
  for run in text:gmatch("`+") do if #run > longest then longest = #run end end
  return ("`"):rep(longest + 1)
end

-- The chat messages for the judge.
function M.messages(instructions, rubrics, diff, max_diff)
  local lines = {"# Task given to the agent", "", instructions ~= "" and instructions or "(no instructions)", "",
                 "# Rubrics to grade", ""}
  for _, r in ipairs(rubrics) do
    lines[#lines + 1] = ("- `%s` (weight %s): %s"):format(r.id, tostring(r.weight), r.criterion or "")
    if type(r.evaluation_criteria) == "table" then
      for _, c in ipairs(r.evaluation_criteria) do lines[#lines + 1] = "  - " .. tostring(c) end
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "# The agent's change (git diff)"
  lines[#lines + 1] = ""
  if diff == "" then
    lines[#lines + 1] = "(the agent made no changes)"
  else
    local shown = M.truncate(diff, max_diff)
    local f = fence(shown)
    lines[#lines + 1] = f .. "diff"
    lines[#lines + 1] = shown .. f
  end
  local ids = {}
  for _, r in ipairs(rubrics) do ids[#ids + 1] = '"' .. r.id .. '"' end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "# Answer format"
  lines[#lines + 1] = ""
  lines[#lines + 1] = 'Reply with a JSON object whose keys are exactly the rubric ids (' .. table.concat(ids, ", ") ..
    '), each mapped to {"score": <number from 0 to 1>, "reasoning": "<one or two sentences>"}. ' ..
    "Score 1 when the criterion is fully met, 0 when not at all."
  return {
    {role = "system", content = SYSTEM},
    {role = "user", content = table.concat(lines, "\n")},
  }
end

-- Removes one outer ```json fence a model may wrap its answer in.
local function unfence(s)
  s = s:match("^%s*(.-)%s*$")
  local inner = s:match("^```[%w_-]*%s*\n(.-)\n?```$")
  return inner or s
end

-- Parses the model's answer strictly. Returns a list of {rubric_id, score, reasoning} in rubric
-- order, or nil, reason.
function M.parse(content, rubrics)
  if type(content) ~= "string" then return nil, "the answer has no text content" end
  local v, err = json.decode(unfence(content))
  if v == nil then return nil, "the answer is not valid JSON: " .. tostring(err) end
  if type(v) ~= "table" or json.is_array(v) then return nil, "the answer is not a JSON object" end
  local out = {}
  for _, r in ipairs(rubrics) do
    local e = v[r.id]
    if e == nil then return nil, ("the answer has no entry for rubric '%s'"):format(r.id) end
    if type(e) ~= "table" then return nil, ("the entry for rubric '%s' is not an object"):format(r.id) end
    local s = e.score
    if type(s) ~= "number" or s ~= s then
      return nil, ("the score for rubric '%s' is not a number"):format(r.id)
    end
    if s < 0 or s > 1 then
      return nil, ("the score for rubric '%s' is %s, outside 0..1"):format(r.id, tostring(s))
    end
    local reasoning = e.reasoning
    if reasoning == nil or reasoning == json.null then reasoning = "" end
    if type(reasoning) ~= "string" then
      return nil, ("the reasoning for rubric '%s' is not a string"):format(r.id)
    end
    out[#out + 1] = {rubric_id = r.id, score = s + 0.0, reasoning = reasoning}
  end
  return out
end

-- Replaces every occurrence of the secret in strings inside v (recursively).
local function scrub(v, secret)
  if not secret or #secret < 6 then return v end    -- a "key" of a letter or two is no secret
  if type(v) == "string" then
    local out = v:gsub(secret:gsub("%p", "%%%0"), "***")
    return out
  end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = scrub(x, secret) end
  end
  return v
end

-- A URL with any user:password@ part replaced by ***@.
function M.hide_credentials(url)
  return (url:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1***@"))
end

local function excerpt(s, n)
  s = (s or ""):gsub("%s+", " ")
  if #s > n then s = s:sub(1, n) .. "..." end
  return s
end

local function weighted(scores, rubrics)
  local w = {}
  for _, r in ipairs(rubrics) do w[r.id] = r.weight end
  local sum, total = 0.0, 0
  for _, rs in ipairs(scores) do
    sum = sum + rs.score * (w[rs.rubric_id] or 0)
    total = total + (w[rs.rubric_id] or 0)
  end
  return total > 0 and sum / total or 0.0, total
end

local function option(opts, name, env_name)
  local v = opts[name]
  if v == nil and env_name then
    v = os.getenv(env_name)
    if v == "" then v = nil end
  end
  if v == nil then v = M.defaults[name] end
  return v
end

-- Sends the request and returns the parsed scores or nil, reason.
local function ask(o, rubrics)
  local body = {model = o.model, messages = M.messages(o.instructions, rubrics, o.diff, o.max_diff)}
  if o.json_mode then body.response_format = {type = "json_object"} end
  local url = o.base_url:gsub("/+$", "") .. "/chat/completions"
  local shown = M.hide_credentials(url)
  local resp, err = http.request{
    method = "POST", url = url, body = json.encode(body), timeout = o.timeout,
    headers = {["content-type"] = "application/json", authorization = "Bearer " .. o.api_key},
  }
  if not resp then
    if err.code == "timeout" then
      return nil, ("judge request to %s failed: no answer within %gs"):format(shown, o.timeout)
    end
    return nil, "judge request failed: " .. tostring(err.message or err)   -- curl's message names the request
  end
  if resp.status < 200 or resp.status > 299 then
    return nil, ("judge request to %s failed: HTTP %d: %s"):format(shown, resp.status, excerpt(resp.body, 300))
  end
  local doc = json.decode(resp.body)
  local content = type(doc) == "table" and type(doc.choices) == "table" and type(doc.choices[1]) == "table"
                  and type(doc.choices[1].message) == "table" and doc.choices[1].message.content
  if type(content) ~= "string" then
    return nil, ("judge response from %s is not a chat completion (no choices[0].message.content): %s")
                  :format(shown, excerpt(resp.body, 300))
  end
  local scores, why = M.parse(content, rubrics)
  if not scores then return nil, ("judge answer rejected: %s (answer: %s)"):format(why, excerpt(content, 300)) end
  return scores
end

-- Runs the judge. opts: model (required), rubrics (the rubrics to grade: those without tests),
-- instructions (default task.instructions, with task = a runbox.task table), diff, base_url
-- ($OPENAI_BASE_URL), api_key ($OPENAI_API_KEY), timeout, max_diff, json_mode.
-- Never raises for a failed judge: returns the lm_evaluation table {model, rubric_scores =
-- {{rubric_id, score, reasoning}...}, weighted_score, metadata, error?}. With error set,
-- rubric_scores is empty and weighted_score is json.null: nothing is made up.
function M.run(opts)
  if type(opts) ~= "table" then error("judge.run: expected a table of options", 2) end
  if type(opts.model) ~= "string" or opts.model == "" then error("judge.run: option 'model' is required", 2) end
  local rubrics = opts.rubrics or {}
  local task = type(opts.task) == "table" and opts.task or {}
  local o = {
    model = opts.model, instructions = opts.instructions or task.instructions or "", diff = opts.diff or "",
    base_url = option(opts, "base_url", "OPENAI_BASE_URL"), api_key = option(opts, "api_key", "OPENAI_API_KEY"),
    timeout = option(opts, "timeout"), max_diff = option(opts, "max_diff"), json_mode = option(opts, "json_mode"),
  }
  local lm = {model = o.model, rubric_scores = json.array(), weighted_score = json.null,
              metadata = {model = o.model, judged_rubrics = #rubrics, endpoint = M.hide_credentials(o.base_url)}}
  if #rubrics == 0 then
    lm.note = "every rubric has tests: nothing to judge"
    return lm
  end
  if type(o.api_key) ~= "string" or o.api_key == "" then
    lm.error = "OPENAI_API_KEY is not set: export it (or pass api_key) to use --judge"
    return lm
  end
  if o.api_key:find("[%c]") then
    lm.error = "OPENAI_API_KEY contains a control character (a line break?): set it to the bare key"
    return lm
  end
  local scores, why = ask(o, rubrics)
  if not scores then
    lm.error = why
    return scrub(lm, o.api_key)
  end
  for i, rs in ipairs(scores) do lm.rubric_scores[i] = rs end
  lm.weighted_score, lm.metadata.total_weight = weighted(scores, rubrics)
  return scrub(lm, o.api_key)
end

M.evaluate = M.run

-- True when the judge produced scores that may be used.
function M.ok(lm)
  return type(lm) == "table" and not lm.error and type(lm.rubric_scores) == "table" and #lm.rubric_scores > 0
end

return M
