-- runbox prepare CREATED_DIR [--out DIR]: turn a created task into a prepared one and print the
-- prepared folder's path (only that, on stdout, so scripts can capture it).
local cli = require "runbox.cli"
local task = require "runbox.task"

local spec = {
  name = "prepare",
  summary = "Turn a created task (files at its root, as the task creator writes them) into a prepared\n"
         .. "task: DIR/<name> with tb_meta.json (evaluation as rubrics + test_scripts) and overlay_files/.\n"
         .. "<name> is the task id without its _YYYYMMDD_HHMMSS suffix.",
  positional = {{name = "created_dir", help = "the created task folder (it holds tb_meta.json)"}},
  flags = {
    {name = "out", value = "DIR", default = "data/tasks/prepared",
     help = "folder that receives the prepared task, relative to the current folder"},
  },
  epilog = "Running it again updates the prepared task in place: unchanged files are not rewritten and\n"
        .. "files of your own in the prepared folder are kept. Prints the prepared path on stdout.",
}

local args = cli.main(spec, {...})
local dir, err = task.prepare(args.created_dir, {out = args.out})
if not dir then
  io.stderr:write("runbox prepare: ", tostring(err), "\n")
  os.exit(1)
end
io.stdout:write(dir, "\n")
