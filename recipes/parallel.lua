-- runbox parallel CONFIG: run every task of the config's datasets, many at once, with a journal
-- that --resume uses to finish a batch after a crash or Ctrl-C; prints the summary table.
local cli = require "runbox.cli"
local batch = require "runbox.batch"
local fs = require "runbox.fs"

local spec = {
  name = "parallel",
  summary = "Run many tasks in parallel from a YAML (or Lua) config and summarise the results.",
  positional = {{name = "config", help = "the batch config: YAML (agents, datasets, output) or a Lua file returning it"}},
  flags = {
    {name = "max-parallel", value = "N", type = "integer", help = "runs at once (overrides agents.max_parallel)"},
    {name = "dataset", value = "NAME", help = "only this dataset (its listed tasks, or every task folder in it)"},
    {name = "agent", value = "AGENT", help = "codex, oracle, none or cmd:SHELL-LINE (overrides agents.agent)"},
    {name = "model", value = "MODEL", help = "overrides agents.model"},
    {name = "timeout", value = "SECONDS", type = "number", help = "agent time limit (overrides agents.timeout_sec)"},
    {name = "backend", value = "NAME", help = "sandbox backend (overrides agents.backend; default local)"},
    {name = "retries", value = "N", type = "integer", help = "retries for infrastructure errors (default 2)"},
    {name = "format", value = "FORMAT", default = "markdown", help = "summary format: markdown, csv or json"},
    {name = "output", value = "FILE", help = "write the summary there instead of stdout"},
    {name = "resume", value = "BATCH_DIR", help = "finish the batch in BATCH_DIR: rerun only what did not finish"},
    {name = "judge", value = "MODEL", help = "LLM judge for rubrics without tests"},
  },
}

local args = cli.main(spec, {...})
if args.format ~= "markdown" and args.format ~= "csv" and args.format ~= "json" then
  io.stderr:write("runbox parallel: --format must be markdown, csv or json, not '", args.format, "'\n")
  os.exit(2)
end
if args.max_parallel and args.max_parallel < 1 then
  io.stderr:write("runbox parallel: --max-parallel must be at least 1\n")
  os.exit(2)
end
local cfg, err = batch.load_config(args.config)
if not cfg then
  io.stderr:write("runbox parallel: ", tostring(err), "\n")
  os.exit(2)
end
local result, berr = batch.run{config = cfg, dataset = args.dataset, max_parallel = args.max_parallel,
                               agent = args.agent, model = args.model, timeout = args.timeout,
                               backend = args.backend, retries = args.retries, resume = args.resume,
                               judge = args.judge,
                               on_line = function(text) io.stderr:write(text, "\n") end}
if not result then
  io.stderr:write("runbox parallel: ", tostring(berr), "\n")
  os.exit(1)
end
local text = result.outputs[args.format]
if args.output then
  assert(fs.write_atomic(args.output, text))
  io.stderr:write("summary written to ", args.output, "\n")
else
  io.stdout:write(text)
end
io.stderr:write("batch folder: ", result.dir, "\n")
if result.infra_errors > 0 then os.exit(1) end
