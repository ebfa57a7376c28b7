-- runbox parallel CONFIG: run every task of the config's datasets, many at once, with a journal
-- that --resume uses to finish a batch after a crash or Ctrl-C; prints the summary table.
local cli = require "runbox.cli"
local batch = require "runbox.batch"
local fs = require "runbox.fs"
local errors = require "runbox.errors"

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
    {name = "resume", value = "BATCH_DIR",
     help = "finish the batch in BATCH_DIR: rerun only what did not finish (with the batch's settings where no flag is given)"},
    {name = "judge", value = "MODEL", help = "LLM judge for rubrics without tests"},
  },
  epilog = "Progress goes to stderr, the summary to stdout (or --output). The batch folder under\n"
        .. "output.results_dir holds batch.json, journal.jsonl, runs/ and summary.md/.csv/.json.\n"
        .. "Exit status: 0 when every task ran (whatever its score), 1 when some ended with an\n"
        .. "infrastructure error (--resume tries them again), 2 for bad input, 130 after Ctrl-C.",
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
if args.retries and args.retries < 0 then
  io.stderr:write("runbox parallel: --retries must be 0 or more\n")
  os.exit(2)
end
if args.timeout and args.timeout <= 0 then
  io.stderr:write("runbox parallel: --timeout must be a positive number of seconds\n")
  os.exit(2)
end
-- the summary file's folder is made first (as the original runner does), so a bad --output
-- fails before the batch rather than after it
local st = args.output and fs.stat(args.output)
if st and st.type == "dir" then
  io.stderr:write("runbox parallel: --output ", args.output, ": is a folder; give a file name\n")
  os.exit(2)
end
local folder = args.output and args.output:match("^(.+)/[^/]*$")
if folder then
  local ok, ferr = fs.mkdir_p(folder)
  if not ok then
    io.stderr:write("runbox parallel: --output ", args.output, ": cannot make its folder: ", tostring(ferr), "\n")
    os.exit(2)
  end
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
                               -- a live board on a terminal; one line per event otherwise
                               board = require("runbox.c.log").isatty(2) and os.getenv("RUNBOX_NO_BOARD") == nil,
                               on_line = function(text) io.stderr:write(text, "\n") end}
if not result then
  io.stderr:write("runbox parallel: ", tostring(berr), "\n")
  -- bad input (a flag, the config, the datasets) is a usage error; nothing was run
  os.exit((errors.is(berr, "usage") or errors.is(berr, "config")) and 2 or 1)
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
