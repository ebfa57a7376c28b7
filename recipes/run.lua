-- runbox run TASK_DIR: run one task end to end (prepare if needed, sandbox, agent, diff, evaluate,
-- report) and print the [results] block. Exit 0 when the run completed, whatever the score.
local cli = require "runbox.cli"
local runner = require "runbox.runner"

local spec = {
  name = "run",
  summary = "Run an agent on one OneShot task in a sandbox, score the result and write data/runs/<run_id>/.",
  positional = {{name = "task_dir", help = "a prepared or created task folder (it holds tb_meta.json)"}},
  flags = {
    {name = "backend", value = "NAME", default = "local", help = "sandbox backend: local (bubblewrap)"},
    {name = "agent", value = "AGENT", default = "oracle",
     help = "codex, oracle (applies the task's diff.patch), none, or cmd:SHELL-LINE"},
    {name = "model", value = "MODEL", default = "gpt-5-mini", help = "model for agents that use one"},
    {name = "timeout", value = "SECONDS", type = "number", default = 1800, help = "agent time limit"},
    {name = "token-limit", value = "N", type = "integer", help = "stop the agent past N tokens (counted live)"},
    {name = "run-id", value = "ID", help = "run id (default: UTC time plus a random suffix)"},
    {name = "runs-dir", value = "DIR", default = "data/runs", help = "where run folders go"},
    {name = "judge", value = "MODEL", help = "score rubrics without tests with an LLM judge (OpenAI-compatible API)"},
    {name = "test-timeout", value = "SECONDS", type = "number", default = 300, help = "time limit per test script"},
    {name = "codex-bin", value = "PATH", help = "the codex binary to run in the sandbox (default: codex on PATH)"},
    {name = "price-input", value = "USD", type = "number", help = "USD per million input tokens, for the cost in results.json"},
    {name = "price-cached", value = "USD", type = "number", help = "USD per million cached input tokens (default: the input price)"},
    {name = "price-output", value = "USD", type = "number", help = "USD per million output tokens"},
    {name = "bootstrap", help = "run the task's own overlay_files/box_bootstrap.sh instead of an agent; it ends when it writes artifacts/completion.json"},
  },
  epilog = "The model endpoint is $OPENAI_BASE_URL (default https://api.openai.com/v1) with $OPENAI_API_KEY;\n"
        .. "the agent reaches it through runbox's metering proxy and never sees the key.",
}

local args = cli.main(spec, {...})
local agent_ok, agent_err = require("runbox.agent").get(args.agent)
if not agent_ok then io.stderr:write("runbox run: --agent: ", agent_err, "\n"); os.exit(2) end
if args.run_id and require("runbox.fs").exists(args.runs_dir .. "/" .. args.run_id) then
  io.stderr:write(("runbox run: --run-id %s: %s/%s already exists; pick another id\n"):format(args.run_id, args.runs_dir, args.run_id))
  os.exit(2)
end
local results = runner.run{task_dir = args.task_dir, backend = args.backend, agent = args.agent,
                           model = args.model, timeout = args.timeout, token_limit = args.token_limit,
                           run_id = args.run_id, runs_dir = args.runs_dir, judge = args.judge,
                           test_timeout = args.test_timeout, codex_bin = args.codex_bin,
                           bootstrap = args.bootstrap,
                           prices = args.price_input and args.price_output
                                    and {input = args.price_input, cached_input = args.price_cached, output = args.price_output}}
-- the agent ran to some end: a result, even a failing one; anything else is an infrastructure error
local ran = results.agent and results.agent.exit_code ~= nil or results.status == "completed"
if not ran or results.status == "sandbox_error" or results.status == "cancelled" then os.exit(1) end
