-- Reports of a run and of a batch, in the layouts of the original OneShot tools
-- (oneshot-format.md §3.2, §3.3, §4 step 11, §5) with their bugs fixed:
--
--   report.markdown(info, t, evaluation, results, diff_text, lm)        -> scoring_results.md text
--   report.evaluation_json(info, t, evaluation, results, diff_text, lm) -> evaluation_results.json table
--   report.results_block(info, t, evaluation, results, diff_text, lm)   -> the "[results]" console block
--   report.summary_markdown(records, info), summary_csv(records), summary_json(records)
--
-- `evaluation` is eval.score's table, `results` eval.run_tests's, `lm` judge.run's (or nil).
-- Scores may be nil or json.null (as read back from a file): both mean "no score".
local json = require "runbox.json"
local util = require "runbox.util"

local M = {}

---------------------------------------------------------------------------------------------------
-- small helpers

local function num(v)
  if type(v) == "number" and v == v then return v end
  return nil
end

local function pct(x) return ("%.0f%%"):format(x * 100) end

-- A weight as Python prints small decimals: 0.4, 1, 0.34.
local function weight_text(w)
  w = num(w) or 0
  if math.type(w) == "integer" then return tostring(w) end
  return ("%.6g"):format(w)
end

-- 20 cells, as many filled as whole twentieths of the score (a tiny epsilon absorbs 0.35*20 = 6.99..).
local function bar(score)
  local s = math.max(0, math.min(1, score))
  local filled = math.floor(s * 20 + 1e-9)
  return "[" .. ("█"):rep(filled) .. ("░"):rep(20 - filled) .. "]"
end

-- A code fence longer than any run of backticks in text, so the block always closes where it should.
local function fence(text)
  local longest = 2
  for run in text:gmatch("`+") do if #run > longest then longest = #run end end
  return ("`"):rep(longest + 1)
end

local function code_block(text, lang)
  local f = fence(text)
  if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
  return f .. (lang or "") .. "\n" .. text .. f .. "\n"
end

-- Text on one line: line breaks become spaces, no space at either end.
local function flat(s)
  s = tostring(s or ""):gsub("\r?\n", " ")
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Text fit for one markdown table cell: one line, pipes escaped.
local function cell(s)
  return (flat(s):gsub("|", "\\|"))
end

local function shorten(s, n)
  s = tostring(s or "")
  if #s <= n then return s end
  -- do not cut a UTF-8 sequence in half
  local cut = n - 3
  while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return s:sub(1, cut) .. "..."
end

-- The lines of s without their "\n" (a last line without one counts; a final "\n" ends no line).
local function lines_of(s)
  local out, pos = {}, 1
  s = s or ""
  while pos <= #s do
    local nl = s:find("\n", pos, true)
    if not nl then
      out[#out + 1] = s:sub(pos)
      break
    end
    out[#out + 1] = s:sub(pos, nl - 1)
    pos = nl + 1
  end
  return out
end

local function status_of(score)
  if not score then return "❓ N/A" end
  if score >= 1.0 then return "✅ PASS" end
  if score >= 0.5 then return "⚠️ PARTIAL" end
  return "❌ FAIL"
end

local function overall_emoji(score)
  if score >= 1.0 then return "🏆" end
  if score >= 0.8 then return "✅" end
  if score >= 0.5 then return "⚠️" end
  return "❌"
end

-- Rubric ids in the task's order, then any others the evaluation has, sorted.
local function rubric_order(t, evaluation)
  local ids, seen = {}, {}
  for _, r in ipairs(t and t.rubrics or {}) do
    if evaluation.rubrics[r.id] and not seen[r.id] then ids[#ids + 1] = r.id; seen[r.id] = true end
  end
  local rest = {}
  for id in pairs(evaluation.rubrics or {}) do if not seen[id] then rest[#rest + 1] = id end end
  table.sort(rest)
  for _, id in ipairs(rest) do ids[#ids + 1] = id end
  return ids
end

local function judge_ok(lm)
  return type(lm) == "table" and not lm.error and type(lm.rubric_scores) == "table" and #lm.rubric_scores > 0
end

-- Lines added and deleted by a unified diff, counted inside hunks from their headers (so a removed
-- line that begins with "--" or an added one with "++" is still counted).
function M.diff_stats(diff)
  local added, deleted = 0, 0
  local old_left, new_left = 0, 0
  for _, line in ipairs(lines_of(diff)) do
    if old_left > 0 or new_left > 0 then
      local c = line:sub(1, 1)
      if c == "+" then added, new_left = added + 1, new_left - 1
      elseif c == "-" then deleted, old_left = deleted + 1, old_left - 1
      elseif c == " " or line == "" then old_left, new_left = old_left - 1, new_left - 1
      elseif c ~= "\\" then old_left, new_left = 0, 0 end    -- "\ No newline at end of file" is not a line
    else
      local a, b = line:match("^@@ %-%d+,?(%d*) %+%d+,?(%d*) @@")
      if a then old_left, new_left = tonumber(a) or 1, tonumber(b) or 1 end
    end
  end
  return added, deleted
end

-- Python's len(text.splitlines()) for the common line ends.
local function line_count(text)
  if not text or text == "" then return 0 end
  local n = select(2, text:gsub("\n", ""))
  if text:sub(-1) ~= "\n" then n = n + 1 end
  return n
end

-- At most 10 lines that say why a test failed: pytest's "E" lines, FAILED/ERROR lines, the final
-- tally and runbox's own notes; else the last non-empty lines. One pass over the text that makes a
-- string only of the lines it keeps (this runs on every failed test's output).
local find, byte, sub, match = string.find, string.byte, string.sub, string.match

function M.failure_excerpt(output, max)
  max = max or 10
  output = output or ""
  local picked = {}
  local pos, n = 1, #output
  local next_in, next_err = 0, 0     -- where " in " and "Error:" occur next (n + 1: nowhere)
  while pos <= n do
    local nl = find(output, "\n", pos, true) or n + 1
    local c = byte(output, pos)
    local hit
    if c == 69 then hit = find(output, "^E[ \t\r\v\f]", pos) or find(output, "^ERROR ", pos)      -- E
    elseif c == 70 then hit = find(output, "^FAILED ", pos)                                     -- F
    elseif c == 91 then hit = find(output, "^%[runbox%]", pos)                                  -- [
    elseif c == 114 then hit = find(output, "^runbox: ", pos)                                   -- r
    end
    if not hit and (c == 61 or c == 32 or (c >= 48 and c <= 57)) then                          -- the tally
      if next_in < pos then next_in = find(output, " in ", pos, true) or n + 1 end
      if next_in < nl then
        local line = sub(output, pos, nl - 1)
        hit = match(line, "^=* ?%d+ [%w ,]*in [%d.]+s") or match(line, "^%d+ %a+.* in [%d.]+s")
      end
    end
    if not hit then                                                                            -- SomeError:
      if next_err < pos then next_err = find(output, "Error:", pos, true) or n + 1 end
      hit = next_err < nl and match(sub(output, pos, nl - 1), "^%S*Error:")
    end
    if hit then picked[#picked + 1] = shorten(sub(output, pos, nl - 1), 300) end
    pos = nl + 1
  end
  if #picked == 0 then
    local all = lines_of(output)
    for i = #all, 1, -1 do
      if all[i]:match("%S") then table.insert(picked, 1, shorten(all[i], 300)) end
      if #picked >= max then break end
    end
  end
  if #picked > max then
    -- keep the first lines (the assertion) and the last one (the tally)
    local last = picked[#picked]
    picked = table.move(picked, 1, max - 1, 1, {})
    picked[max] = last
  end
  return picked
end

---------------------------------------------------------------------------------------------------
-- scoring_results.md

local function header(out, info, t)
  out[#out + 1] = "# 📊 Scoring Results\n\n"
  out[#out + 1] = ("**Run ID:** `%s`  \n"):format(info.run_id or "?")
  out[#out + 1] = ("**Task:** `%s`  \n"):format(t.id or "?")
  out[#out + 1] = ("**Task Title:** %s  \n"):format(cell(t.title or t.name or t.id or ""))
  out[#out + 1] = ("**Generated:** %s  \n\n"):format(info.generated or ("runbox, " .. util.iso8601()))
end

local function scores_section(out, evaluation, lm)
  local total = num(evaluation.total_score) or 0
  out[#out + 1] = ("## %s Overall Score: **%s**\n\n"):format(overall_emoji(total), pct(total))
  out[#out + 1] = ("```\n%s %.1f%%\n```\n\n"):format(bar(total), total * 100)
  if judge_ok(lm) and num(lm.weighted_score) then
    -- the judge's own average over the rubrics it graded, shown apart from the total
    local s = lm.weighted_score
    out[#out + 1] = ("### 🤖 LM Rubric Overall: **%s**\n\n"):format(pct(s))
    out[#out + 1] = ("```\n%s %.1f%%\n```\n\n"):format(bar(s), s * 100)
  end
end

local function rubric_table(out, t, evaluation, lm)
  out[#out + 1] = "## 📋 Rubric Scores\n\n"
  out[#out + 1] = "| Rubric | Weight | Score | Tests | Status | Criterion |\n"
  out[#out + 1] = "|--------|--------|-------|-------|--------|-----------|\n"
  for _, id in ipairs(rubric_order(t, evaluation)) do
    local r = evaluation.rubrics[id]
    local score = num(r.score)
    local tests
    if r.score_source == "judge" then tests = "LLM judge"
    elseif score then tests = ("%d/%d"):format(r.tests_passed or 0, r.test_count or 0)
    else tests = "0/0" end
    out[#out + 1] = ("| `%s` | %s | **%s** | %s | %s | %s |\n"):format(
      cell(id), pct(num(r.weight) or 0), score and pct(score) or "N/A", tests, status_of(score), cell(r.criterion))
  end
  out[#out + 1] = "\n"
  if type(lm) == "table" and lm.error then
    out[#out + 1] = ("> ⚠️ The LLM judge (`%s`) failed, so rubrics without tests have no score: %s\n\n")
                      :format(cell(lm.model or "?"), cell(lm.error))
  end
  if judge_ok(lm) then
    out[#out + 1] = "## 🤖 LM Rubric Scores\n\n"
    out[#out + 1] = "| Rubric | LM Score | Reasoning (truncated) |\n"
    out[#out + 1] = "|--------|----------|-----------------------|\n"
    for _, rs in ipairs(lm.rubric_scores) do
      out[#out + 1] = ("| `%s` | %s | %s |\n"):format(cell(rs.rubric_id), pct(num(rs.score) or 0),
                                                       cell(shorten(flat(rs.reasoning), 100)))
    end
    out[#out + 1] = "\n"
  end
end

local function test_entry(out, ts, res)
  if not res then
    out[#out + 1] = ("❌ **%s** - NOT RUN\n\n"):format(ts.path)
    return
  end
  if res.success then
    out[#out + 1] = ("✅ **%s** - PASSED\n\n"):format(ts.path)
    return
  end
  if res.timed_out then
    out[#out + 1] = ("⏱️ **%s** - TIMED OUT\n\n"):format(ts.path)
  else
    out[#out + 1] = ("❌ **%s** - FAILED\n\n"):format(ts.path)
  end
  local excerpt = M.failure_excerpt(res.output)
  if #excerpt > 0 then out[#out + 1] = code_block(table.concat(excerpt, "\n")) .. "\n" end
end

local function tests_section(out, t, evaluation, results)
  out[#out + 1] = "## 🧪 Test Results\n\n"
  local scripts = t.test_scripts or {}
  if #scripts == 0 then
    out[#out + 1] = "*No test scripts*\n\n"
    return
  end
  local known = {}
  for _, id in ipairs(rubric_order(t, evaluation)) do
    known[id] = true
    local any = false
    for _, ts in ipairs(scripts) do
      if ts.rubric_id == id then
        if not any then out[#out + 1] = ("### Rubric: `%s`\n\n"):format(id); any = true end
        test_entry(out, ts, results[ts.path])
      end
    end
  end
  local any = false
  for _, ts in ipairs(scripts) do
    if not known[ts.rubric_id] then
      if not any then out[#out + 1] = "### Tests of no listed rubric\n\n"; any = true end
      test_entry(out, ts, results[ts.path])
    end
  end
end

local function definitions_section(out, t)
  out[#out + 1] = "## 📝 Test Definitions\n\n"
  local scripts = t.test_scripts or {}
  if #scripts == 0 then
    out[#out + 1] = "*No test scripts*\n\n"
    return
  end
  out[#out + 1] = "<details>\n<summary>Click to expand test code</summary>\n\n"
  for _, ts in ipairs(scripts) do
    out[#out + 1] = ("### %s (rubric: `%s`)\n\n"):format(ts.path, tostring(ts.rubric_id or "none"))
    out[#out + 1] = code_block(ts.content or "", "python") .. "\n"
  end
  out[#out + 1] = "</details>\n\n"
end

local function diff_section(out, diff)
  out[#out + 1] = "## 🔧 Agent's Changes\n\n"
  if not diff or not diff:match("%S") then
    out[#out + 1] = "*No changes made*\n\n"
    return
  end
  out[#out + 1] = "<details>\n<summary>Click to see diff</summary>\n\n"
  out[#out + 1] = code_block(diff, "diff") .. "\n"
  out[#out + 1] = "</details>\n\n"
  local a, d = M.diff_stats(diff)
  out[#out + 1] = ("**Changes:** +%d / -%d lines\n\n"):format(a, d)
end

local function instructions_section(out, t)
  out[#out + 1] = "## 📄 Task Instructions\n\n"
  out[#out + 1] = "<details>\n<summary>Original task instructions</summary>\n\n"
  out[#out + 1] = code_block(t.instructions or "") .. "\n"
  out[#out + 1] = "</details>\n\n"
end

-- scoring_results.md. info: {run_id, generated (text for the Generated line; default
-- "runbox, <UTC time>")}; t: the task (id, title, instructions, rubrics, test_scripts).
function M.markdown(info, t, evaluation, results, diff_text, lm)
  if type(evaluation) ~= "table" or type(evaluation.rubrics) ~= "table" then
    error("report.markdown: evaluation (from eval.score) expected", 2)
  end
  info, t, results = info or {}, t or {}, results or {}
  local out = {}
  header(out, info, t)
  scores_section(out, evaluation, lm)
  rubric_table(out, t, evaluation, lm)
  tests_section(out, t, evaluation, results)
  definitions_section(out, t)
  diff_section(out, diff_text)
  instructions_section(out, t)
  out[#out + 1] = "---\n*Report generated by runbox*\n"
  return table.concat(out)
end

---------------------------------------------------------------------------------------------------
-- evaluation_results.json

local function or_null(v) if v == nil then return json.null end return v end

local function evaluation_for_json(evaluation)
  local rubrics = {}
  for id, r in pairs(evaluation.rubrics) do
    local score = num(r.score)
    rubrics[id] = {criterion = or_null(r.criterion), weight = r.weight, score = or_null(score), max_score = 1.0,
                   weighted_score = or_null(score and num(r.weighted_score) or nil),
                   test_count = r.test_count or 0, tests_passed = r.tests_passed or 0,
                   score_source = r.score_source}
  end
  return {rubrics = rubrics, total_score = num(evaluation.total_score) or 0.0, max_score = 1.0,
          tests_passed = evaluation.tests_passed, tests_failed = evaluation.tests_failed}
end

-- The evaluation_results.json table (§3.2 keys): task_id, run_id, evaluation, test_results
-- {path = {success, output, duration_sec, exit_code, timed_out}}, diff_lines, and lm_evaluation,
-- agent_metrics when given (agent_metrics: the 7th argument or info.agent_metrics).
function M.evaluation_json(info, t, evaluation, results, diff_text, lm, agent_metrics)
  if type(evaluation) ~= "table" or type(evaluation.rubrics) ~= "table" then
    error("report.evaluation_json: evaluation (from eval.score) expected", 2)
  end
  info, t = info or {}, t or {}
  local tr = {}
  for path, r in pairs(results or {}) do
    tr[path] = {success = r.success == true, output = r.output or "", duration_sec = r.duration_sec,
                exit_code = r.exit_code, timed_out = r.timed_out}
  end
  return {
    task_id = t.id or json.null,
    run_id = info.run_id or json.null,
    evaluation = evaluation_for_json(evaluation),
    test_results = tr,
    diff_lines = line_count(diff_text),
    lm_evaluation = lm,
    agent_metrics = agent_metrics or info.agent_metrics,
  }
end

-- test_output.txt as the original wrote it: one block per test script, in the task's order.
function M.test_output(t, results)
  local out = {}
  local rule = ("="):rep(60)
  for _, ts in ipairs(t.test_scripts or {}) do
    local r = (results or {})[ts.path]
    local status = not r and "NOT RUN" or r.success and "PASSED" or r.timed_out and "TIMED OUT" or "FAILED"
    out[#out + 1] = ("%s\nTEST: %s\nSTATUS: %s\n%s\n%s\n\n"):format(rule, ts.path, status, rule, r and r.output or "")
  end
  return table.concat(out)
end

---------------------------------------------------------------------------------------------------
-- the [results] console block

-- info.diff_max_lines (default 200): longer diffs are cut on the console (the file has them whole).
function M.results_block(info, t, evaluation, results, diff_text, lm)
  if type(evaluation) ~= "table" or type(evaluation.rubrics) ~= "table" then
    error("report.results_block: evaluation (from eval.score) expected", 2)
  end
  info, t = info or {}, t or {}
  local P = "[results] "
  local out = {P .. ("="):rep(40), P .. "Git diff:"}
  if diff_text and diff_text:match("%S") then
    local lines = lines_of(diff_text)
    local max = info.diff_max_lines or 200
    for i = 1, math.min(#lines, max) do out[#out + 1] = lines[i] end
    if #lines > max then
      out[#out + 1] = ("[... %d more diff lines in artifacts/diff.patch ...]"):format(#lines - max)
    end
  else
    out[#out + 1] = "(empty)"
  end
  out[#out + 1] = P .. ("-"):rep(40)
  out[#out + 1] = P .. "Rubric total score: " .. pct(num(evaluation.total_score) or 0)
  for _, id in ipairs(rubric_order(t, evaluation)) do
    local r = evaluation.rubrics[id]
    local score = num(r.score)
    out[#out + 1] = ("%s - %s: %s (weight=%s)%s"):format(P, id, score and pct(score) or "N/A", weight_text(r.weight),
                                                        r.score_source == "judge" and " [LLM judge]" or "")
  end
  local passed, failed = evaluation.tests_passed, evaluation.tests_failed
  if not passed then
    passed, failed = 0, 0
    for _, r in pairs(results or {}) do
      if r.success then passed = passed + 1 else failed = failed + 1 end
    end
  end
  out[#out + 1] = P .. "UNIT TESTS:"
  out[#out + 1] = ("%s%d passed, %d failed"):format(P, passed, failed)
  if type(lm) == "table" and lm.error then
    out[#out + 1] = ("%sLLM JUDGE (Model: %s) FAILED: %s"):format(P, tostring(lm.model), lm.error)
  elseif judge_ok(lm) then
    out[#out + 1] = ("%sLLM JUDGE RUBRIC SCORES (Model: %s)"):format(P, tostring(lm.model))
    out[#out + 1] = P .. "LLM total score: " .. pct(num(lm.weighted_score) or 0)
    for _, rs in ipairs(lm.rubric_scores) do
      out[#out + 1] = ("%s - %s (%s): %s"):format(P, rs.rubric_id, pct(num(rs.score) or 0),
                                                  shorten(flat(rs.reasoning), 200))
    end
  end
  out[#out + 1] = P .. ("="):rep(40)
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------------------------------
-- batch summaries

local STATUS_ICON = {completed = "✅", failed = "❌", timeout = "⏱️", token_limit = "🪙",
                     sandbox_error = "🔥", error = "🔥", cancelled = "🛑"}

-- A summary record from what a run produced (no scraping of printed text):
-- {task, run_id, run_dir, status, duration, exit_code, error, evaluation, results}.
function M.record(r)
  if type(r) ~= "table" or type(r.task) ~= "string" then error("report.record: a table with 'task' expected", 2) end
  local rec = {task = r.task, run_id = r.run_id, run_dir = r.run_dir, status = r.status or "error",
               duration = num(r.duration), exit_code = r.exit_code, error = r.error,
               rubric_scores = {}, test_results = {}}
  local ev = r.evaluation
  if type(ev) == "table" and type(ev.rubrics) == "table" then
    rec.score = num(ev.total_score)
    for id, rb in pairs(ev.rubrics) do rec.rubric_scores[id] = num(rb.score) or json.null end
  end
  local passed, failed = 0, 0
  for path, res in pairs(r.results or r.test_results or {}) do
    local ok = res == true or (type(res) == "table" and res.success == true)
    rec.test_results[path] = ok
    if ok then passed = passed + 1 else failed = failed + 1 end
  end
  if next(rec.test_results) then rec.tests_passed, rec.tests_failed = passed, failed end
  return rec
end

local function before(a, b)
  if a.task ~= b.task then return a.task < b.task end
  return tostring(a.run_id or "") < tostring(b.run_id or "")
end

-- The records by task, then run id: a copy, sorted only when out of order (each summary format
-- sorts the same list, which the batch has sorted once).
local function sorted(records)
  local list = table.move(records, 1, #records, 1, {})
  for i = 2, #list do
    if before(list[i], list[i - 1]) then table.sort(list, before) break end
  end
  return list
end
M.sorted = sorted

local function keys_sorted(t)
  local ks = {}
  for k in pairs(t or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function rubric_cell(rec)
  local parts = {}
  for _, id in ipairs(keys_sorted(rec.rubric_scores)) do
    local s = num(rec.rubric_scores[id])
    parts[#parts + 1] = ("%s: %s"):format(cell(id), s and pct(s) or "N/A")
  end
  if #parts == 0 then return "N/A" end
  return table.concat(parts, #parts > 2 and "<br>" or " / ")
end

local function tests_cell(rec)
  local paths = keys_sorted(rec.test_results)
  if #paths == 0 then return "-" end
  local bad = {}
  for _, p in ipairs(paths) do if not rec.test_results[p] then bad[#bad + 1] = cell(p) end end
  local s = ("✅ %d/%d"):format(#paths - #bad, #paths)
  if #bad > 0 then
    local shown = table.move(bad, 1, math.min(#bad, 3), 1, {})
    s = s .. "<br>❌ " .. table.concat(shown, ", ")
    if #bad > 3 then s = s .. (", +%d more"):format(#bad - 3) end
  end
  return s
end

local function seconds(v) return ("%.1fs"):format(num(v) or 0) end

-- The batch summary in markdown (§5's layout). info: {run_time, wall_time, title}.
function M.summary_markdown(records, info)
  info = info or {}
  local list = sorted(records)
  local n, completed, total_time, scored, score_sum = #list, 0, 0.0, 0, 0.0
  local counts, names = {}, {}
  for _, r in ipairs(list) do
    if r.status == "completed" then completed = completed + 1 end
    counts[r.status] = (counts[r.status] or 0) + 1
    total_time = total_time + (num(r.duration) or 0)
    if num(r.score) then scored, score_sum = scored + 1, score_sum + r.score end
    names[r.task] = (names[r.task] or 0) + 1
  end
  local out = {"", "## " .. (info.title or "Results Summary"), ""}
  out[#out + 1] = "- **Run Time:** " .. (info.run_time or os.date("!%Y-%m-%d %H:%M:%S UTC"))
  out[#out + 1] = "- **Total Tasks:** " .. n
  out[#out + 1] = ("- **Success Rate:** %d/%d (%.1f%%) runs completed"):format(completed, n, n > 0 and completed * 100 / n or 0)
  local sc = {}
  for _, s in ipairs(keys_sorted(counts)) do sc[#sc + 1] = ("%s %d"):format(s, counts[s]) end
  if #sc > 0 then out[#out + 1] = "- **Statuses:** " .. table.concat(sc, ", ") end
  if scored > 0 then
    out[#out + 1] = ("- **Average Score:** %.1f%% (over %d scored run%s)"):format(score_sum * 100 / scored, scored,
                                                                               scored == 1 and "" or "s")
  else
    out[#out + 1] = "- **Average Score:** N/A (no run was scored)"
  end
  out[#out + 1] = ("- **Total Time:** %.1fs"):format(total_time)
  out[#out + 1] = ("- **Average Time:** %.1fs per task"):format(n > 0 and total_time / n or 0)
  if num(info.wall_time) then out[#out + 1] = ("- **Wall Time:** %.1fs"):format(info.wall_time) end
  out[#out + 1] = ""
  out[#out + 1] = "### Evaluation Results"
  out[#out + 1] = ""
  out[#out + 1] = "| Task | Status | Total Score | Rubric Scores | Unit Tests | Time |"
  out[#out + 1] = "|------|--------|-------------|---------------|------------|------|"
  local errs = {}
  for _, r in ipairs(list) do
    local name = cell(r.task)
    if names[r.task] > 1 and r.run_id then name = ("%s (%s)"):format(name, cell(r.run_id)) end
    local score = num(r.score)
    out[#out + 1] = ("| %s | %s %s | %s | %s | %s | %s |"):format(name, STATUS_ICON[r.status] or "❓", cell(r.status),
      score and ("**" .. pct(score) .. "**") or "-", score and rubric_cell(r) or "N/A", tests_cell(r), seconds(r.duration))
    if r.error and r.error ~= json.null and tostring(r.error) ~= "" then errs[#errs + 1] = {name, r.error} end
  end
  if #errs > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "### Errors"
    out[#out + 1] = ""
    for _, e in ipairs(errs) do out[#out + 1] = ("- **%s**: %s"):format(e[1], cell(shorten(tostring(e[2]), 500))) end
  end
  out[#out + 1] = ""
  out[#out + 1] = "### Evaluation Methods"
  out[#out + 1] = ""
  out[#out + 1] = "- **Total Score**: the sum of score × weight over rubrics that have a score, divided by the sum of all rubric weights."
  out[#out + 1] = "- **Rubric Scores**: the share of a rubric's test scripts that pass; N/A for a rubric without tests (unless an LLM judge scored it with `--judge`)."
  out[#out + 1] = "- **Unit Tests**: each test script is run with `python3 -m pytest` in the repository after the agent finished; it passes when pytest exits with 0."
  out[#out + 1] = "- **Success Rate**: runs that completed (agent ran and was evaluated), whatever their score."
  return table.concat(out, "\n") .. "\n"
end

-- One CSV field, quoted when it holds a comma, a quote, CR or LF (RFC 4180).
local function csv_field(v)
  if v == nil or v == json.null then return "" end
  local s = tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- The batch summary as CSV (RFC 4180, CRLF line ends), one row per run sorted by task; the
-- original columns first, full error text.
function M.summary_csv(records)
  local rows = {"Task,Status,Score,Duration,Exit Code,Error,Tests Passed,Tests Failed,Run ID"}
  for _, r in ipairs(sorted(records)) do
    local score = num(r.score)
    local fields = {r.task, r.status, score and ("%.1f"):format(score * 100) or nil,
                    num(r.duration) and ("%.1f"):format(r.duration) or nil, r.exit_code, r.error,
                    r.tests_passed, r.tests_failed, r.run_id}
    local cells = {}
    for i = 1, 9 do cells[i] = csv_field(fields[i]) end
    rows[#rows + 1] = table.concat(cells, ",")
  end
  return table.concat(rows, "\r\n") .. "\r\n"
end

-- The batch summary as JSON: the records sorted by task, missing values as null.
function M.summary_json(records)
  local list = json.array()
  for i, r in ipairs(sorted(records)) do
    list[i] = {task = r.task, run_id = or_null(r.run_id), run_dir = r.run_dir, status = r.status,
               score = or_null(num(r.score)), rubric_scores = r.rubric_scores or {},
               test_results = r.test_results or {}, tests_passed = r.tests_passed, tests_failed = r.tests_failed,
               duration = or_null(num(r.duration)), exit_code = or_null(r.exit_code), error = or_null(r.error)}
  end
  return json.pretty(list) .. "\n"
end

return M
