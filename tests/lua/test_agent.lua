-- Agent definitions: the command lines they produce and their parsing helpers.
local T = require "runbox.testing"
local agent = require "runbox.agent"

T.test("codex gets a custom provider, the prompt, and its key only in the environment", function()
  local a = assert(agent.get("codex"))
  local argv, env = a.command{model = "gpt-5.5", base_url = "http://127.0.0.1:9/v1", api_token = "tok-123",
                              prompt = "Fix the bug", codex_bin = "/opt/codex"}
  T.eq(argv[1], "/opt/codex")
  T.eq(argv[#argv], "Fix the bug")
  local line = table.concat(argv, " ")
  T.match(line, 'base_url="http://127%.0%.0%.1:9/v1"')
  T.match(line, "model_provider=runbox")
  T.match(line, 'model_reasoning_effort="medium"')
  T.ok(not line:find("tok%-123"), "the key is not in argv")
  T.eq(env.OPENAI_API_KEY, "tok-123")
  local plain = a.command{model = "my-model", base_url = "http://x/v1", prompt = "p"}
  T.ok(not table.concat(plain, " "):find("reasoning"), "no reasoning flags for other models")
  -- no endpoint in between (a cloud sandbox): codex's own provider, the key from the sandbox's secret
  local direct, denv = a.command{model = "gpt-5-mini", prompt = "p", codex_bin = "/codex/bin/codex"}
  T.ok(not table.concat(direct, " "):find("model_provider"), "no custom provider without base_url")
  T.eq(denv.OPENAI_API_KEY, nil)
  T.eq(direct[1], "/codex/bin/codex")
end)

T.test("get resolves names, cmd: lines and recipe tables; rejects the rest", function()
  T.eq(agent.get("oracle").name, "oracle")
  T.eq(agent.get("none").name, "none")
  local c = assert(agent.get("cmd:echo hi"))
  local argv, env = c.command{prompt_file = "/app/LM_INSTRUCTIONS.md", base_url = "u", api_token = "k", model = "m"}
  T.eq(argv, {"bash", "-c", "echo hi"})
  T.eq(env.RUNBOX_PROMPT_FILE, "/app/LM_INSTRUCTIONS.md")
  local custom = {name = "mine", command = function() return {"true"}, {} end}
  T.ok(agent.get(custom) == custom)
  local bad, err = agent.get("gpt-agent")
  T.eq(bad, nil)
  T.match(err, "unknown agent 'gpt%-agent'")
end)

T.test("codex's closing token count is read from its log", function()
  T.eq(agent.codex_tokens_from_log("...\ntokens used\n2,240,687\n"), 2240687)
  T.eq(agent.codex_tokens_from_log("tokens used\n1,080"), 1080)
  T.eq(agent.codex_tokens_from_log("no usage here"), nil)
end)

T.run()
