-- Agents: what runs in the sandbox between the baseline commit and the diff.
--
-- An agent is a table {name, uses_model, command(ctx) -> argv, env [, stdin]} where ctx has:
-- model, prompt_file (in the sandbox), repo ("/app/repo"), base_url (the metering proxy, for
-- agents that use a model), api_token (what the agent sends as its API key), reasoning_effort,
-- codex_bin, reference_patch (the host path of the task's diff.patch, which the sandbox lacks).
-- Stock agents: codex, oracle, none, and command strings ("cmd: ..." or any shell line).
local fs = require "runbox.fs"

local M = {}

-- Models that take reasoning flags (as the original bootstrap decided).
local function is_reasoning_model(model)
  return model:match("^gpt%-5") or model:match("^gpt%-6") or model:match("^o%d") ~= nil
end

local function toml_string(s) return '"' .. s:gsub('[\\"]', "\\%0") .. '"' end

-- The real Codex CLI. OPENAI_BASE_URL is ignored by codex, so the endpoint (runbox's metering
-- proxy) is given as a custom model provider; the key travels in the environment only.
M.codex = {
  name = "codex",
  uses_model = true,
  command = function(ctx)
    local argv = {ctx.codex_bin or "codex", "exec", "--dangerously-bypass-approvals-and-sandbox",
                  "--skip-git-repo-check", "--ephemeral", "-m", ctx.model}
    -- without base_url (a cloud sandbox, where no proxy sits in between): codex's own provider
    if ctx.base_url then
      local provider = ("model_providers.runbox={name=\"runbox\", base_url=%s, wire_api=\"responses\", "
                        .. "env_key=\"OPENAI_API_KEY\", supports_websockets=false, request_max_retries=0, "
                        .. "stream_max_retries=0}"):format(toml_string(ctx.base_url))
      for _, a in ipairs{"-c", "model_provider=runbox", "-c", provider} do argv[#argv + 1] = a end
    end
    for _, a in ipairs{"-c", "analytics.enabled=false", "--disable", "plugins", "--disable", "unbounded_connection_retries"} do
      argv[#argv + 1] = a
    end
    if is_reasoning_model(ctx.model) then
      argv[#argv + 1] = "-c"
      argv[#argv + 1] = ("model_reasoning_effort=%s"):format(toml_string(ctx.reasoning_effort or "medium"))
      argv[#argv + 1] = "-c"
      argv[#argv + 1] = 'reasoning.summaries="auto"'
    end
    argv[#argv + 1] = ctx.prompt
    return argv, {OPENAI_API_KEY = ctx.api_token, CODEX_HOME = "/app/.codex-home", OPENAI_MODEL = ctx.model}
  end,
  setup = {"mkdir -p /app/.codex-home"},
}

-- Applies the task's reference solution: scores 100% on a well-formed task. The patch comes on
-- stdin: it is never a file in the sandbox, where another agent could read it.
M.oracle = {
  name = "oracle",
  uses_model = false,
  command = function(ctx)
    local patch = ctx.reference_patch and fs.read(ctx.reference_patch)
    if not patch or not patch:match("%S") then
      return {"bash", "-c", "echo 'oracle: the task has no diff.patch' >&2; exit 3"}, {}
    end
    return {"bash", "-c", "git apply --whitespace=nowarn - && echo 'oracle: applied diff.patch'"}, {}, patch
  end,
}

-- Does nothing: the baseline score of a task.
M.none = {name = "none", uses_model = false}

-- Any shell command line, run in the repo with the prompt in $RUNBOX_PROMPT_FILE and the model
-- endpoint in OPENAI_BASE_URL / OPENAI_API_KEY / OPENAI_MODEL (the metering proxy).
function M.command(line)
  return {
    name = "command",
    uses_model = true,
    command = function(ctx)
      return {"bash", "-c", line}, {RUNBOX_PROMPT_FILE = ctx.prompt_file, OPENAI_BASE_URL = ctx.base_url,
                                    OPENAI_API_KEY = ctx.api_token, OPENAI_MODEL = ctx.model}
    end,
  }
end

-- A prepared task's own overlay_files/box_bootstrap.sh (the original runners' entry point), run
-- in the repo with the variables it expects. The runner ends it once it writes
-- /app/artifacts/completion.json with "completed": true (the original ended with `sleep 120`).
function M.bootstrap(task_id)
  return {
    name = "bootstrap",
    uses_model = true,
    watch_completion = true,
    command = function(ctx)
      return {"bash", "/app/box_bootstrap.sh"}, {TASK_ID = task_id or "unknown", OPENAI_MODEL = ctx.model,
                                                 OPENAI_API_KEY = ctx.api_token, OPENAI_BASE_URL = ctx.base_url,
                                                 ARTIFACTS_DIR = "/app/artifacts", PYTHONUNBUFFERED = "1"}
    end,
  }
end

-- Resolves an --agent value: a stock name, "cmd:LINE", or a table defined by a Lua recipe.
function M.get(spec)
  if type(spec) == "table" then
    if type(spec.command) ~= "function" and spec.name ~= "none" then
      return nil, "an agent table needs a command(ctx) function returning argv, env"
    end
    return spec
  end
  if type(spec) ~= "string" or spec == "" then return nil, "agent: expected a name" end
  if M[spec] and type(M[spec]) == "table" and M[spec].name then return M[spec] end
  local line = spec:match("^cmd:(.+)$")
  if line then return M.command(line) end
  return nil, ("unknown agent '%s': use codex, oracle, none, or cmd:SHELL-LINE"):format(spec)
end

-- Reads codex's closing "tokens used\n1,234" lines: the fallback count when no proxy sat in between.
function M.codex_tokens_from_log(text)
  local n = text:match("tokens used%s*\n%s*([%d,]+)%s*$") or text:match(".*tokens used%s*\n%s*([%d,]+)")
  return n and tonumber((n:gsub(",", ""))) or nil
end

M.is_reasoning_model = is_reasoning_model

return M
