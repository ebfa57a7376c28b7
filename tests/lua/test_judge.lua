-- judge: the LLM judge against a stand-in OpenAI-compatible chat endpoint served by runbox.httpd in
-- this test: a good answer, HTTP 500, garbage, an out-of-range score, a missing rubric, a slow
-- answer past the time limit. A failed judge is recorded with its reason and never gets a score,
-- and the API key reaches the endpoint but never the recorded result.
local T = require "runbox.testing"
local judge = require "runbox.judge"
local httpd = require "runbox.httpd"
local json = require "runbox.json"
local sched = require "runbox.sched"
local proc = require "runbox.proc"

T.timeout = 20

local KEY = "sk-test-SECRET-4f9a2c"
local RUBRICS = {
  {id = "code_quality", criterion = "Code follows best practices", weight = 0.3},
  {id = "docs", criterion = "The README explains | the new flag", weight = 0.1},
}

local function chat(content)
  return json.encode{id = "chatcmpl-1", object = "chat.completion",
                     choices = {{index = 0, message = {role = "assistant", content = content}, finish_reason = "stop"}}}
end

local GOOD = json.encode{code_quality = {score = 0.8, reasoning = "Small, clear functions."},
                         docs = {score = 0, reasoning = "README untouched."}}

-- The stand-in: the first path segment picks the behaviour; every request is recorded.
local function stand_in()
  local seen = {}
  local answers = {
    good = function(res) res:header("content-type", "application/json"):send(chat(GOOD)) end,
    fenced = function(res) res:send(chat("```json\n" .. GOOD .. "\n```")) end,
    echo500 = function(res, req) res:status(500):send("internal error; you sent " .. tostring(req.headers.authorization)) end,
    garbage = function(res) res:send(chat("Sure! Here are the scores: code_quality 8/10")) end,
    notchat = function(res) res:send('{"object": "list"}') end,
    toohigh = function(res)
      res:send(chat(json.encode{code_quality = {score = 1.7, reasoning = "great"}, docs = {score = 0.5, reasoning = "ok"}}))
    end,
    missing = function(res) res:send(chat(json.encode{code_quality = {score = 0.5, reasoning = "ok"}})) end,
    stringscore = function(res)
      res:send(chat(json.encode{code_quality = {score = "0.5", reasoning = "ok"}, docs = {score = 0.5, reasoning = "ok"}}))
    end,
    slow = function(res) sched.sleep(5); res:send(chat(GOOD)) end,
  }
  local srv = assert(httpd.serve({port = 0}, httpd.router{
    ["POST /:mode/v1/chat/completions"] = function(req, res)
      local body = req:body()
      seen[#seen + 1] = {mode = req.params.mode, authorization = req.headers.authorization, body = json.decode(body)}
      answers[req.params.mode](res, req)
    end,
  }))
  return srv, seen
end

local function run(srv, mode, extra)
  local opts = {model = "judge-model", rubrics = RUBRICS, instructions = "Add a --verbose flag.",
                diff = "diff --git a/x.py b/x.py\n+print('hi')\n", base_url = srv.url .. "/" .. mode .. "/v1",
                api_key = KEY, timeout = 5}
  for k, v in pairs(extra or {}) do opts[k] = v end
  return judge.run(opts)
end

local function no_key_in(lm)
  local text = json.encode(lm)
  T.ok(not text:find(KEY, 1, true), "the API key leaked into the recorded result: " .. text)
end

T.test("a good answer gives rubric scores and a weighted score; the key went in the header only", function()
  local srv, seen = stand_in()
  local lm = run(srv, "good")
  T.eq(lm.error, nil)
  T.eq(lm.model, "judge-model")
  T.eq(lm.rubric_scores, {{rubric_id = "code_quality", score = 0.8, reasoning = "Small, clear functions."},
                          {rubric_id = "docs", score = 0.0, reasoning = "README untouched."}})
  T.ok(math.abs(lm.weighted_score - 0.6) < 1e-12, tostring(lm.weighted_score))   -- (0.8*0.3 + 0*0.1) / 0.4
  T.ok(judge.ok(lm))
  T.eq(#seen, 1)
  T.eq(seen[1].authorization, "Bearer " .. KEY)
  local body = seen[1].body
  T.eq(body.model, "judge-model")
  T.eq(body.response_format, {type = "json_object"})
  T.eq(body.messages[1].role, "system")
  local user = body.messages[2].content
  T.match(user, "Add a %-%-verbose flag%.")
  T.match(user, "`code_quality` %(weight 0%.3%): Code follows best practices")
  T.match(user, "print%('hi'%)")
  T.match(user, '"code_quality", "docs"')
  no_key_in(lm)
  T.ok(not json.encode(lm.metadata):find("SECRET"))
  srv:close()
end)

T.test("judge.evaluate takes the instructions from a task table", function()
  local srv, seen = stand_in()
  local lm = judge.evaluate{model = "m", task = {instructions = "Instructions from LM_INSTRUCTIONS.md"},
                            rubrics = RUBRICS, diff = "", base_url = srv.url .. "/good/v1", api_key = KEY}
  T.eq(lm.error, nil)
  T.match(seen[1].body.messages[2].content, "Instructions from LM_INSTRUCTIONS%.md")
  srv:close()
end)

T.test("an answer in a ```json fence is accepted", function()
  local srv = stand_in()
  local lm = run(srv, "fenced")
  T.eq(lm.error, nil)
  T.eq(lm.rubric_scores[1].score, 0.8)
  srv:close()
end)

T.test("HTTP 500 is a failed judge with the reason; an echoed key is scrubbed", function()
  local srv = stand_in()
  local lm = run(srv, "echo500")
  T.match(lm.error, "HTTP 500")
  T.match(lm.error, "internal error; you sent Bearer %*%*%*")
  T.eq(#lm.rubric_scores, 0)
  T.eq(lm.weighted_score, json.null)
  T.ok(not judge.ok(lm))
  no_key_in(lm)
  srv:close()
end)

T.test("garbage, a non-chat body, a score of 1.7, a string score and a missing rubric all fail; nothing is invented", function()
  local srv = stand_in()
  local cases = {
    garbage = "not valid JSON",
    notchat = "not a chat completion",
    toohigh = "the score for rubric 'code_quality' is 1%.7, outside 0%.%.1",
    stringscore = "the score for rubric 'code_quality' is not a number",
    missing = "no entry for rubric 'docs'",
  }
  for mode, why in pairs(cases) do
    local lm = run(srv, mode)
    T.match(lm.error, why, mode)
    T.eq(#lm.rubric_scores, 0, mode)
    T.eq(lm.weighted_score, json.null, mode)
    T.eq(json.encode(lm.rubric_scores), "[]", mode)
    no_key_in(lm)
  end
  srv:close()
end)

T.test("a slow answer past the time limit fails at the limit", function()
  local srv = stand_in()
  local t0 = sched.now()
  local lm = run(srv, "slow", {timeout = 0.5})
  local took = sched.now() - t0
  T.match(lm.error, "no answer within 0%.5s")
  T.ok(took < 3, "took " .. took)
  T.eq(#lm.rubric_scores, 0)
  srv:close()
end)

T.test("an unreachable endpoint fails with the reason", function()
  local lm = judge.run{model = "m", rubrics = RUBRICS, base_url = "http://127.0.0.1:1/v1", api_key = KEY, timeout = 5}
  T.match(lm.error, "^judge request failed: .*http://127%.0%.0%.1:1/v1/chat/completions")
  no_key_in(lm)
end)

T.test("no rubric to judge: no request, no score, no error", function()
  local srv, seen = stand_in()
  local none = judge.run{model = "m", rubrics = {}, api_key = KEY, base_url = srv.url .. "/good/v1"}
  T.eq(none.note, "every rubric has tests: nothing to judge")
  T.eq(none.error, nil)
  T.eq(#none.rubric_scores, 0)
  T.ok(not judge.ok(none))
  T.eq(#seen, 0)
  srv:close()
end)

T.test("OPENAI_BASE_URL and OPENAI_API_KEY come from the environment; a missing key is a clear failure", function()
  local srv, seen = stand_in()
  local code = [[
    local judge = require "runbox.judge"
    local json = require "runbox.json"
    local lm = judge.run{model = "m", rubrics = {{id = "code_quality", criterion = "c", weight = 1},
                                                 {id = "docs", criterion = "d", weight = 1}}}
    io.write(json.encode(lm))
  ]]
  local bin = T.runbox_bin()
  local r = assert(proc.run{bin, "-e", code, timeout = 15,
                            env = {OPENAI_BASE_URL = srv.url .. "/good/v1/", OPENAI_API_KEY = KEY}})
  T.eq(r.code, 0, r.stderr)
  local lm = assert(json.decode(r.stdout))
  T.eq(lm.error, nil)
  T.eq(#lm.rubric_scores, 2)
  T.eq(seen[#seen].authorization, "Bearer " .. KEY)
  T.ok(not r.stdout:find(KEY, 1, true) and not r.stderr:find(KEY, 1, true))
  local before = #seen
  r = assert(proc.run{bin, "-e", code, timeout = 15, env = {OPENAI_BASE_URL = srv.url .. "/good/v1", OPENAI_API_KEY = false}})
  lm = assert(json.decode(r.stdout))
  T.match(lm.error, "OPENAI_API_KEY is not set")
  T.eq(#seen, before, "no request without a key")
  srv:close()
end)

T.test("a long diff is cut with a marker; an empty diff is said to be empty", function()
  local srv, seen = stand_in()
  local big = {}
  for i = 1, 2000 do big[i] = ("+line %d of a long change"):format(i) end
  local diff = table.concat(big, "\n") .. "\n"
  run(srv, "good", {diff = diff, max_diff = 1000})
  local user = seen[#seen].body.messages[2].content
  T.match(user, "%[%.%.%. diff truncated by runbox: %d+ of " .. #diff .. " bytes shown %.%.%.%]")
  T.ok(#user < 3000, "request stays small: " .. #user)
  T.ok(not user:find("line 2000 of", 1, true))
  run(srv, "good", {diff = ""})
  T.match(seen[#seen].body.messages[2].content, "%(the agent made no changes%)")
  local cut, was = judge.truncate("short\n", 100)
  T.eq(cut, "short\n"); T.eq(was, false)
  srv:close()
end)

T.test("parse is strict about shape", function()
  T.eq(select(2, judge.parse("[1, 2]", RUBRICS)), "the answer is not a JSON object")
  T.match(select(2, judge.parse('{"code_quality": 0.5, "docs": 0.5}', RUBRICS)), "is not an object")
  T.match(select(2, judge.parse('{"code_quality": {"score": 0.5, "reasoning": 3}, "docs": {"score": 1}}', RUBRICS)),
          "reasoning for rubric 'code_quality' is not a string")
  T.match(select(2, judge.parse('{"code_quality": {"score": -0.1}, "docs": {"score": 1}}', RUBRICS)), "outside 0..1")
  local ok = judge.parse('{"code_quality": {"score": 1}, "docs": {"score": 0.25}, "extra": {"score": 9}}', RUBRICS)
  T.eq(ok, {{rubric_id = "code_quality", score = 1.0, reasoning = ""}, {rubric_id = "docs", score = 0.25, reasoning = ""}})
  T.raises("option 'model' is required", judge.run, {rubrics = RUBRICS})
  local lm = judge.run{model = "m", rubrics = RUBRICS, api_key = "sk-abc\ndef", base_url = "http://127.0.0.1:1"}
  T.match(lm.error, "OPENAI_API_KEY contains a control character")
end)

T.run()
