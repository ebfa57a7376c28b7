-- runbox parallel examples/parallel.lua
-- The same configuration as examples/parallel.yaml, as a Lua table: every example task on the
-- local sandbox with the oracle agent (which applies each task's diff.patch: 100% expected).
-- Paths are relative to the folder runbox is started from; flags override these values.
return {
  agents = {
    agent = "oracle",        -- oracle | none | codex | a command
    model = "gpt-5-mini",    -- used by model-backed agents (codex); the oracle ignores it
    timeout_sec = 600,       -- per task, the agent's time limit
    token_limit = 100000,    -- per task, enforced live by the metering proxy
    max_parallel = 4,        -- tasks running at once
  },
  datasets = {
    examples = {
      path = "examples/tasks",   -- every folder with a tb_meta.json under it, sorted
      enabled = true,
    },
  },
  output = {
    results_dir = "data/results",
    save_artifacts = true,
  },
}
