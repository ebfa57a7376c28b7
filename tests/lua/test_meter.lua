-- The metering proxy between an agent and its model endpoint.
local T = require "runbox.testing"
local meter = require "runbox.meter"
local http = require "runbox.http"
local httpd = require "runbox.httpd"
local json = require "runbox.json"
local fs = require "runbox.fs"
local sched = require "runbox.sched"

local root = os.getenv("RUNBOX_SOURCE") or "."
local standin = dofile(root .. "/tests/helpers/responses_standin.lua")

local function responses_call(base, token, body)
  return http.request{method = "POST", url = base .. "/responses", timeout = 10,
                      headers = {["content-type"] = "application/json", authorization = "Bearer " .. token},
                      body = json.encode(body or {model = "m", stream = true, input = {}})}
end

T.test("forwards the stream unchanged, counts usage, swaps the key, writes traces", T.with_temp_dir(function(dir)
  local up <close> = standin.start{steps = {{message = "hi"}}, usage = {input = 100, cached = 40, output = 7}}
  local m <close> = assert(meter.start{upstream = up.base_url, api_key = "sk-real-secret-123",
                                       client_token = "run-token", traces_path = dir .. "/traces.jsonl"})
  local resp = assert(responses_call(m.base_url, "run-token"))
  T.eq(resp.status, 200)
  T.match(resp.headers["content-type"], "text/event%-stream")
  T.match(resp.body, "event: response.completed")
  T.match(resp.body, '"text":"hi"')
  T.eq(up.requests[1].auth, "Bearer sk-real-secret-123")
  local u = m:usage()
  T.eq({u.input, u.cached, u.output, u.counted, u.requests}, {100, 40, 7, 67, 1})
  local traces = assert(fs.read(dir .. "/traces.jsonl"))
  local t1 = assert(json.decode(traces:match("[^\n]+")))
  T.eq(t1.status, 200)
  T.eq(t1.model, "m")
  T.eq(t1.usage.input, 100)
  T.ok(t1.duration_ms >= 0 and t1.ttfb_ms >= 0)
  T.ok(not traces:find("sk%-real%-secret"), "no key in the traces")
  T.ok(not traces:find("run%-token"), "no client token in the traces")
end))

T.test("past the token limit: on_limit fires once and later requests are refused", function()
  local up <close> = standin.start{usage = {input = 600, output = 0}}
  local fired = sched.event()
  local hits = 0
  local m <close> = assert(meter.start{upstream = up.base_url, token_limit = 1000,
                                       on_limit = function(totals) hits = hits + 1; fired:set() end})
  T.eq(assert(responses_call(m.base_url, "any")).status, 200)
  T.eq(hits, 0)
  T.eq(assert(responses_call(m.base_url, "any")).status, 200)   -- crosses the limit
  T.ok(sched.timeout(2, fired.wait, fired))
  local refused = assert(responses_call(m.base_url, "any"))
  T.eq(refused.status, 429)
  T.match(refused.body, "token limit of 1000")
  T.eq(hits, 1)
  T.eq(#up.requests, 2, "the refused request never reached the model")
end)

T.test("a wrong client token is refused", function()
  local up <close> = standin.start{}
  local m <close> = assert(meter.start{upstream = up.base_url, client_token = "good"})
  T.eq(assert(responses_call(m.base_url, "bad")).status, 401)
  T.eq(#up.requests, 0)
end)

T.test("meters with client tokens share one server and count only their own requests", function()
  local up <close> = standin.start{usage = {input = 10, output = 5}}
  local a = assert(meter.start{upstream = up.base_url, client_token = "tok-a", api_key = "sk-a"})
  local b <close> = assert(meter.start{upstream = up.base_url, client_token = "tok-b", api_key = "sk-b"})
  T.eq(a.base_url, b.base_url, "one listening socket for both")
  T.eq(assert(responses_call(a.base_url, "tok-a")).status, 200)
  T.eq(assert(responses_call(b.base_url, "tok-b")).status, 200)
  T.eq(assert(responses_call(b.base_url, "tok-b")).status, 200)
  T.eq({a:usage().requests, b:usage().requests}, {1, 2})
  T.eq({up.requests[1].auth, up.requests[2].auth}, {"Bearer sk-a", "Bearer sk-b"}, "each meter sends its own key")
  a:close()
  T.eq(assert(responses_call(b.base_url, "tok-a")).status, 401, "a closed meter's token is refused")
  T.eq(assert(responses_call(b.base_url, "tok-b")).status, 200, "the other meter still serves")
  T.eq(a:usage().requests, 1)
  b:close()
  local resp, err = http.request{method = "POST", url = b.base_url .. "/responses", body = "{}", timeout = 5}
  T.ok(not resp, "the server closed with its last meter")
  T.ok(err)
  local c <close> = assert(meter.start{upstream = up.base_url, client_token = "tok-c"})
  T.eq(assert(responses_call(c.base_url, "tok-c")).status, 200, "a later meter gets a new server")
  T.ok(not meter.start{upstream = up.base_url, client_token = "tok-c"}, "a token cannot be used twice at once")
end)

T.test("usage in a plain JSON answer (chat completions) is counted", function()
  local up <close> = assert(httpd.serve({port = 0}, function(req, res)
    res:header("content-type", "application/json")
    res:send(json.encode{choices = {}, usage = {prompt_tokens = 30, completion_tokens = 12,
                                                prompt_tokens_details = {cached_tokens = 10}}})
  end))
  local m <close> = assert(meter.start{upstream = up.url .. "/v1"})
  local resp = assert(http.request{method = "POST", url = m.base_url .. "/chat/completions", body = "{}", timeout = 10})
  T.eq(resp.status, 200)
  local u = m:usage()
  T.eq({u.input, u.output, u.cached, u.counted}, {30, 12, 10, 32})
end)

T.test("an unreachable upstream is a 502 and a trace with the error", T.with_temp_dir(function(dir)
  local m <close> = assert(meter.start{upstream = "http://127.0.0.1:1/v1", traces_path = dir .. "/t.jsonl"})
  local resp = assert(responses_call(m.base_url, "x"))
  T.eq(resp.status, 502)
  T.match(resp.body, "upstream")
  local t1 = json.decode(assert(fs.read(dir .. "/t.jsonl")):match("[^\n]+"))
  T.match(t1.error, "127%.0%.0%.1")
end))

T.test("SSE events split across chunks are still parsed", function()
  local seen = {}
  local feed = meter.sse_reader(function(d) seen[#seen + 1] = d end)
  feed("event: a\ndata: {\"x\"")
  feed(":1}\n\nevent: b\r\ndata: 2\r\n\r\n")
  T.eq(seen, {'{"x":1}', "2"})
  T.eq(meter.usage_in({type = "response.completed", response = {usage = {input_tokens = 3, output_tokens = 4}}}),
       {input = 3, output = 4, cached = 0, reasoning = 0})
end)

T.run()
