-- eval: test scripts written into a repository and run with the real pytest (Debian's python3-pytest
-- via /usr/bin/python3), scoring by the reference formula (oneshot-format.md §3.6).
--
-- The sandbox here is a tiny adapter that runs commands on the host through runbox.proc in a temp
-- folder, mapping /app/repo to a temp git repository: eval only needs sb:exec(argv, opts) returning
-- a runbox.proc-like process, so this is a unit test of eval; the bubblewrap backend is tested
-- with its own module and end to end by the run recipe's tests.
local T = require "runbox.testing"
local eval = require "runbox.eval"
local proc = require "runbox.proc"
local fs = require "runbox.fs"
local json = require "runbox.json"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

T.timeout = 30

local function host_sandbox(repo)
  local sb = {calls = {}}
  local function map(s)
    if type(s) ~= "string" then return s end
    if s == "/app/repo" then return repo end
    if s:sub(1, 10) == "/app/repo/" then return repo .. s:sub(10) end
    return s
  end
  function sb.exec(self, argv, opts)
    opts = opts or {}
    self.calls[#self.calls + 1] = argv
    local cmd = {}
    for i, a in ipairs(argv) do cmd[i] = map(a) end
    -- programs are looked up on the host's system PATH, as in the local sandbox (not ~/.pyenv)
    if not cmd[1]:find("/") then
      for _, d in ipairs{"/usr/bin/", "/bin/"} do
        if fs.exists(d .. cmd[1]) then cmd[1] = d .. cmd[1]; break end
      end
    end
    cmd.cwd = map(opts.cwd or "/app/repo")
    cmd.env = {PATH = "/usr/bin:/bin", PYTHONPATH = false}
    for k, v in pairs(opts.env or {}) do cmd.env[k] = v end
    cmd.stdin = opts.stdin
    cmd.timeout = opts.timeout
    return proc.spawn(cmd)
  end
  return sb
end

local function git(repo, ...)
  local cmd = {"git", "-C", repo, ...}
  cmd.env = {GIT_AUTHOR_NAME = "t", GIT_AUTHOR_EMAIL = "t@x", GIT_COMMITTER_NAME = "t", GIT_COMMITTER_EMAIL = "t@x"}
  local r = assert(proc.run(cmd))
  assert(r.code == 0, "git " .. table.concat({...}, " ") .. ": " .. r.stderr)
  return r.stdout
end

-- A small git repository with one module.
local function make_repo()
  local dir = assert(fs.temp_dir("runbox-eval"))
  local repo = dir .. "/repo"
  assert(fs.mkdir_p(repo))
  assert(fs.write(repo .. "/calc.py", "def add(a, b):\n    return a + b\n"))
  git(repo, "init", "-q")
  git(repo, "add", "-A")
  git(repo, "commit", "-q", "-m", "start")
  return dir, repo
end

local PASS = "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
local FAIL = "from calc import add\n\ndef test_add_wrong():\n    assert add(2, 2) == 5\n"
local ERROR = "import module_that_does_not_exist\n\ndef test_never():\n    pass\n"
local SLOW = "import time\n\ndef test_slow():\n    time.sleep(60)\n"

T.test("pytest runs per script: passing, failing, erroring and timing-out scripts", function()
  local dir, repo = make_repo()
  local t = {test_scripts = {
    {path = "tests/test_pass.py", rubric_id = "a", content = PASS},
    {path = "tests/deep/er/test_fail.py", rubric_id = "a", content = FAIL},
    {path = "test_error.py", rubric_id = "b", content = ERROR},
    {path = "tests/test_slow.py", rubric_id = "b", content = SLOW},
  }}
  local lines = {}
  local t0 = sched.now()
  -- 10 s: room for pytest's start-up on a loaded machine; the slow script sleeps far longer
  local res = assert(eval.run_tests(host_sandbox(repo), t, {timeout = 10, log = function(l) lines[#lines + 1] = l end}))
  local took = sched.now() - t0

  local p = res["tests/test_pass.py"]
  T.eq(p.success, true); T.eq(p.exit_code, 0); T.eq(p.timed_out, false)
  T.match(p.output, "1 passed")
  T.ok(type(p.duration_sec) == "number" and p.duration_sec > 0 and p.duration_sec < 10)

  local f = res["tests/deep/er/test_fail.py"]
  T.eq(f.success, false); T.eq(f.exit_code, 1); T.eq(f.timed_out, false)
  T.match(f.output, "assert 4 == 5")
  T.match(f.output, "1 failed")

  local e = res["test_error.py"]
  T.eq(e.success, false); T.eq(e.exit_code, 2)
  T.match(e.output, "module_that_does_not_exist")

  local s = res["tests/test_slow.py"]
  T.eq(s.success, false); T.eq(s.timed_out, true)
  T.match(s.output, "timed out after 10s")
  T.ok(s.duration_sec >= 10 and s.duration_sec < 30, "slow script stopped at its limit: " .. s.duration_sec)
  T.ok(took < 50)

  -- the scripts were written where the task said, with their content
  T.eq(fs.read(repo .. "/tests/deep/er/test_fail.py"), FAIL)
  T.eq(fs.read(repo .. "/test_error.py"), ERROR)
  -- no pytest cache or bytecode left in the repository
  T.eq(fs.exists(repo .. "/.pytest_cache"), false)
  T.eq(fs.exists(repo .. "/tests/__pycache__"), false)
  T.match(table.concat(lines, "\n"), "%[eval%] tests/test_pass.py: PASSED")
  fs.remove_tree(dir)
end)

T.test("the pytest command is python3 -m pytest -q -p no:cacheprovider <path> in the repo", function()
  local dir, repo = make_repo()
  local sb = host_sandbox(repo)
  local seen
  local exec = sb.exec
  sb.exec = function(self, argv, opts)
    if argv[1] ~= "sh" then seen = {argv = argv, cwd = opts.cwd, timeout = opts.timeout} end
    return exec(self, argv, opts)
  end
  local res = assert(eval.run_tests(sb, {test_scripts = {{path = "tests/test_pass.py", rubric_id = "a", content = PASS}}},
                                    {timeout = 20}))
  T.eq(res["tests/test_pass.py"].success, true)
  T.eq(seen.argv, {"python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_pass.py"})
  T.eq(seen.cwd, "/app/repo")
  T.eq(seen.timeout, 20)
  -- file text that happens to be a stdin keyword of proc is written as text
  res = assert(eval.run_tests(sb, {test_scripts = {{path = "test_word.py", content = "pipe"}}}, {timeout = 20}))
  T.eq(fs.read(repo .. "/test_word.py"), "pipe")
  T.eq(res["test_word.py"].success, false)
  T.match(res["test_word.py"].output, "NameError")
  fs.remove_tree(dir)
end)

T.test("a test path that escapes the repository is an error naming the tb_meta field; nothing runs", function()
  local dir, repo = make_repo()
  for _, bad in ipairs{"../evil.py", "/etc/evil.py", "tests/../../evil.py", "", "tests/"} do
    local sb = host_sandbox(repo)
    local t = {test_scripts = {{path = "tests/test_ok.py", rubric_id = "a", content = PASS},
                               {path = bad, rubric_id = "a", content = PASS}}}
    local res, err = eval.run_tests(sb, t)
    T.eq(res, nil, bad)
    T.ok(errors.is(err, "task"))
    T.match(err.message, "tb_meta.json evaluation.test_scripts%[2%]%.path", bad)
    T.eq(err.field, "tb_meta.json evaluation.test_scripts[2].path")
    T.eq(#sb.calls, 0, "nothing was run for " .. bad)
  end
  T.eq(fs.exists(dir .. "/evil.py"), false)
  local ok, err = eval.validate{{path = "t/a.py", content = ""}, {path = "./t/a.py", content = ""}}
  T.eq(ok, nil)
  T.match(err.message, "test_scripts%[2%]%.path: './t/a.py' is also the path of test_scripts%[1%]")
  ok, err = eval.validate{{path = "t/a.py"}}
  T.match(err.message, "test_scripts%[1%]%.content: missing")
  fs.remove_tree(dir)
end)

T.test("a folder symlinked out of the repository is refused; a symlink at the file is replaced", function()
  local dir, repo = make_repo()
  local outside = dir .. "/outside"
  assert(fs.mkdir_p(outside))
  assert(fs.symlink(outside, repo .. "/tests"))
  assert(fs.write(outside .. "/target.py", "original\n"))
  assert(fs.symlink(outside .. "/target.py", repo .. "/test_link.py"))
  local t = {test_scripts = {{path = "tests/test_x.py", rubric_id = "a", content = PASS},
                             {path = "test_link.py", rubric_id = "a", content = PASS}}}
  local res = assert(eval.run_tests(host_sandbox(repo), t, {timeout = 20}))
  T.eq(res["tests/test_x.py"].success, false)
  T.match(res["tests/test_x.py"].output, "outside the repository")
  T.eq(fs.exists(outside .. "/test_x.py"), false)
  -- the link was replaced by a file: the outside target is untouched, the test ran
  T.eq(res["test_link.py"].success, true)
  T.eq(fs.read(outside .. "/target.py"), "original\n")
  T.eq(fs.lstat(repo .. "/test_link.py").type, "file")
  fs.remove_tree(dir)
end)

T.test("output is bounded: the end is kept with a marker", function()
  local dir, repo = make_repo()
  local noisy = "def test_noisy():\n    print('x' * 100 + '\\n' * 1, end='')\n" ..
                "    for i in range(3000):\n        print('line %d ' % i + 'y' * 60)\n    assert False\n"
  local res = assert(eval.run_tests(host_sandbox(repo), {test_scripts = {{path = "test_noisy.py", content = noisy}}},
                                    {timeout = 20, output_limit = 4096}))
  local out = res["test_noisy.py"].output
  T.ok(#out < 4096 + 200, "bounded: " .. #out)
  T.match(out, "^%[%.%.%. %d+ bytes of output cut; the last %d+ bytes follow %.%.%.%]\n")
  T.match(out, "1 failed")
  fs.remove_tree(dir)
end)

T.test("opts.parallel runs scripts at once; the default runs them one after another", function()
  local dir, repo = make_repo()
  -- each test records when it started and ended: overlapping intervals mean they ran at once
  -- (timestamps, not total durations, so a loaded machine cannot flip the outcome)
  local nap = "import time, os\n\ndef test_nap():\n    a = time.time()\n    time.sleep(1.0)\n" ..
              "    with open(os.path.join(%q, os.path.basename(__file__) + '.span'), 'w') as f:\n" ..
              "        f.write('%%f %%f' %% (a, time.time()))\n"
  nap = nap:format(dir)
  local t = {test_scripts = {{path = "test_a.py", content = nap}, {path = "test_b.py", content = nap}}}
  local function spans()
    local a1, a2 = assert(fs.read(dir .. "/test_a.py.span")):match("(%S+) (%S+)")
    local b1, b2 = assert(fs.read(dir .. "/test_b.py.span")):match("(%S+) (%S+)")
    return tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)
  end
  local res = assert(eval.run_tests(host_sandbox(repo), t, {timeout = 60, parallel = 2}))
  T.eq(res["test_a.py"].success and res["test_b.py"].success, true)
  local a1, a2, b1, b2 = spans()
  T.ok(a1 < b2 and b1 < a2, "parallel: the two naps overlap")
  res = assert(eval.run_tests(host_sandbox(repo), t, {timeout = 60}))
  T.eq(res["test_a.py"].success and res["test_b.py"].success, true)
  a1, a2, b1, b2 = spans()
  T.ok(a2 <= b1 or b2 <= a1, "sequential: one nap ended before the other began")
  fs.remove_tree(dir)
end)

T.test("with the local bubblewrap sandbox, when it can run here", function()
  local ok, sandbox = pcall(require, "runbox.sandbox")
  local backend = ok and sandbox.get("local")
  local sb = backend and backend.create{workdir = "/app", timeout = 60, network = false}
  if not sb then
    print("# skip: the local sandbox is not available here")
    return
  end
  local guard <close> = setmetatable({}, {__close = function() sb:terminate() end})
  local p = assert(sb:exec({"sh", "-c", "mkdir -p /app/repo && printf 'def add(a, b):\\n    return a + b\\n' > /app/repo/calc.py"}))
  T.eq(p:wait(), 0)
  local t = {test_scripts = {{path = "tests/test_pass.py", rubric_id = "a", content = PASS},
                             {path = "tests/test_fail.py", rubric_id = "a", content = FAIL},
                             {path = "tests/test_slow.py", rubric_id = "a", content = SLOW}}}
  local res = assert(eval.run_tests(sb, t, {timeout = 2}))
  T.eq(res["tests/test_pass.py"].success, true, res["tests/test_pass.py"].output)
  T.eq(res["tests/test_fail.py"].exit_code, 1)
  T.eq(res["tests/test_slow.py"].timed_out, true)
end)

---------------------------------------------------------------------------------------------------
-- scoring

local DEFAULT_RUBRICS = {
  {id = "task_completion", criterion = "Task requirements were successfully completed", weight = 0.4},
  {id = "code_quality", criterion = "Code follows best practices and is well-structured", weight = 0.3},
  {id = "testing", criterion = "Appropriate tests were added and pass", weight = 0.3},
}
local DEFAULT_TESTS = {
  {path = "tests/test_task_completion.py", rubric_id = "task_completion", content = ""},
  {path = "tests/test_code_runs.py", rubric_id = "testing", content = ""},
}

local function close_to(got, want) T.ok(math.abs(got - want) < 1e-12, ("expected %.17g, got %.17g"):format(want, got)) end

T.test("the §3.6 worked example: task_completion 0/1, testing 1/1, code_quality without tests -> 0.3", function()
  local results = {["tests/test_task_completion.py"] = {success = false}, ["tests/test_code_runs.py"] = {success = true}}
  local ev = eval.score(DEFAULT_RUBRICS, DEFAULT_TESTS, results)
  close_to(ev.total_score, 0.3)
  T.eq(ev.max_score, 1.0)
  T.eq(ev.rubrics.task_completion, {criterion = "Task requirements were successfully completed", weight = 0.4,
       score = 0.0, max_score = 1.0, weighted_score = 0.0, test_count = 1, tests_passed = 0, score_source = "tests"})
  T.eq(ev.rubrics.testing.score, 1.0)
  close_to(ev.rubrics.testing.weighted_score, 0.3)
  -- no tests: no score, but the weight stays in the denominator
  T.eq(ev.rubrics.code_quality.score, nil)
  T.eq(ev.rubrics.code_quality.weighted_score, nil)
  T.eq(ev.rubrics.code_quality.test_count, 0)
  T.eq(ev.tests_passed, 1); T.eq(ev.tests_failed, 1)
  -- all passing still caps at 0.7 with a test-less rubric (the reference behaviour)
  results["tests/test_task_completion.py"].success = true
  close_to(eval.score(DEFAULT_RUBRICS, DEFAULT_TESTS, results).total_score, 0.7)
end)

T.test("partial rubric scores, missing results count as failed, weights need not sum to 1", function()
  local rubrics = {{id = "a", criterion = "A", weight = 2}, {id = "b", criterion = "B", weight = 1}}
  local tests = {{path = "t1.py", rubric_id = "a"}, {path = "t2.py", rubric_id = "a"}, {path = "t3.py", rubric_id = "a"},
                 {path = "t4.py", rubric_id = "b"}, {path = "t5.py", rubric_id = "nowhere"}}
  local ev = eval.score(rubrics, tests, {["t1.py"] = {success = true}, ["t2.py"] = {success = true},
                                         ["t3.py"] = {success = false}, ["t5.py"] = {success = true}})
  close_to(ev.rubrics.a.score, 2 / 3)
  close_to(ev.rubrics.a.weighted_score, 4 / 3)
  T.eq(ev.rubrics.b.score, 0.0)          -- t4 has no result: failed
  close_to(ev.total_score, (4 / 3) / 3)
  T.eq(ev.tests_passed, 3); T.eq(ev.tests_failed, 2)
end)

T.test("zero weights give a total of 0, not a division by zero", function()
  local rubrics = {{id = "a", criterion = "A", weight = 0}, {id = "b", criterion = "B", weight = 0.0}}
  local ev = eval.score(rubrics, {{path = "t.py", rubric_id = "a"}}, {["t.py"] = {success = true}})
  T.eq(ev.total_score, 0.0)
  T.eq(ev.rubrics.a.score, 1.0)
  T.eq(ev.rubrics.a.weighted_score, 0.0)
  T.eq(ev.rubrics.b.score, nil)
  T.eq(eval.score({}, {}, {}).total_score, 0.0)
end)

T.test("nil scores become JSON null in evaluation_results.json", function()
  local report = require "runbox.report"
  local ev = eval.score(DEFAULT_RUBRICS, DEFAULT_TESTS, {})
  local doc = json.decode(json.encode(report.evaluation_json({run_id = "r"}, {id = "t"}, ev, {}, "")))
  T.eq(doc.evaluation.rubrics.code_quality.score, json.null)
  T.eq(doc.evaluation.rubrics.code_quality.weighted_score, json.null)
  T.eq(doc.evaluation.rubrics.task_completion.score, 0.0)
end)

T.test("bad rubric tables raise", function()
  T.raises("rubrics%[1%]%.weight must be a number", eval.score, {{id = "a", weight = "x"}}, {}, {})
  T.raises("rubrics%[2%]%.id 'a' repeats rubrics%[1%]", eval.score, {{id = "a", weight = 1}, {id = "a", weight = 1}}, {}, {})
end)

T.test("judge scores fill test-less rubrics only when the judge succeeded", function()
  local results = {["tests/test_task_completion.py"] = {success = false}, ["tests/test_code_runs.py"] = {success = true}}
  T.eq(eval.untested(DEFAULT_RUBRICS, DEFAULT_TESTS), {DEFAULT_RUBRICS[2]})
  local good = {model = "m", rubric_scores = {{rubric_id = "code_quality", score = 0.5, reasoning = "ok"},
                                             {rubric_id = "testing", score = 0.0, reasoning = "ignored: has tests"}}}
  local ev = eval.score(DEFAULT_RUBRICS, DEFAULT_TESTS, results, good)
  T.eq(ev.rubrics.code_quality.score, 0.5)
  T.eq(ev.rubrics.code_quality.score_source, "judge")
  T.eq(ev.rubrics.testing.score, 1.0)     -- tests win over the judge
  close_to(ev.total_score, 0.3 + 0.15)
  local failed = {model = "m", rubric_scores = {}, error = "HTTP 500"}
  ev = eval.score(DEFAULT_RUBRICS, DEFAULT_TESTS, results, failed)
  T.eq(ev.rubrics.code_quality.score, nil)
  close_to(ev.total_score, 0.3)
end)

T.test("several scripts run through one sandbox command, with each script's own result and limit", function()
  local dir, repo = make_repo()
  local sb = host_sandbox(repo)
  local noisy = "def test_noisy():\n    for i in range(3000):\n        print('line %d ' % i + 'y' * 60)\n" ..
                "    assert False\n"
  -- every byte value on stdout (at exit, past pytest's capture): the output arrives byte for byte
  local bytes = "import atexit, os\natexit.register(lambda: os.write(1, bytes(range(256))))\n\n" ..
                "def test_bytes():\n    assert False\n"
  local t = {test_scripts = {{path = "tests/test_pass.py", content = PASS}, {path = "test_noisy.py", content = noisy},
                             {path = "tests/test_slow.py", content = SLOW}, {path = "test_error.py", content = ERROR},
                             {path = "test_bytes.py", content = bytes}}}
  local lines = {}
  local res = assert(eval.run_tests(sb, t, {timeout = 8, output_limit = 4096,
                                            log = function(l) lines[#lines + 1] = l end}))
  -- five writer commands (this sandbox has no write_file), then one command ran the five scripts
  local runs = {}
  for _, argv in ipairs(sb.calls) do if argv[1] ~= "sh" then runs[#runs + 1] = argv end end
  T.eq(#runs, 1, "one sandbox command for five scripts")
  local run = runs[1]
  T.eq({run[1], run[2], run[3], run[4]}, {"python3", "-I", "-S", "-c"})
  -- then the time limit, the grace, the output limit, pytest's command and the scripts
  T.eq({table.unpack(run, 6)}, {"8", "2", "4096", "6", "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "tests/test_pass.py", "test_noisy.py", "tests/test_slow.py", "test_error.py",
                                "test_bytes.py"})
  T.eq({res["tests/test_pass.py"].success, res["tests/test_pass.py"].exit_code}, {true, 0})
  local noisy_out = res["test_noisy.py"].output
  T.ok(#noisy_out < 4096 + 200, "bounded: " .. #noisy_out)
  T.match(noisy_out, "^%[%.%.%. %d+ bytes of output cut; the last %d+ bytes follow %.%.%.%]\n")
  T.match(noisy_out, "1 failed")
  local slow = res["tests/test_slow.py"]
  T.eq({slow.success, slow.timed_out}, {false, true})
  T.match(slow.output, "%[runbox%] tests/test_slow.py timed out after 8s; pytest was stopped")
  T.ok(slow.duration_sec >= 8 and slow.duration_sec < 20, "stopped at its own limit: " .. slow.duration_sec)
  T.eq({res["test_error.py"].success, res["test_error.py"].exit_code}, {false, 2})
  T.match(res["test_error.py"].output, "module_that_does_not_exist")
  local all = {}
  for b = 0, 255 do all[#all + 1] = string.char(b) end
  T.ok(res["test_bytes.py"].output:find(table.concat(all), 1, true), "all 256 byte values, in order")
  -- each script's start and end were logged as they happened, in order
  local log = table.concat(lines, "\n")
  T.match(log, "running tests/test_pass.py %(time limit 8s%).*tests/test_pass.py: PASSED.*running test_noisy.py"
               .. ".*test_noisy.py: FAILED %(exit 1%).*tests/test_slow.py: TIMED OUT.*test_error.py: FAILED %(exit 2%)")
  -- together = false: one command per script, the same results
  local sb2 = host_sandbox(repo)
  local res2 = assert(eval.run_tests(sb2, {test_scripts = {t.test_scripts[1], t.test_scripts[4]}},
                                     {timeout = 8, together = false}))
  T.eq(#sb2.calls, 4, "two writers, two pytest commands")
  T.eq({res2["tests/test_pass.py"].success, res2["test_error.py"].exit_code}, {true, 2})
  fs.remove_tree(dir)
end)

T.test("a runner that ends early leaves the scripts it did not finish failed, saying why", function()
  local dir, repo = make_repo()
  local sb = host_sandbox(repo)
  -- a python that reports the first script as started, then dies
  local fake = dir .. "/python3"
  assert(fs.write(fake, "#!/bin/sh\necho 'start 0'\necho 'runner broke' >&2\nexit 3\n"))
  assert(fs.chmod(fake, "755"))
  local t = {test_scripts = {{path = "tests/test_pass.py", content = PASS}, {path = "test_b.py", content = PASS}}}
  local res = assert(eval.run_tests(sb, t, {timeout = 8, python = fake}))
  for _, path in ipairs{"tests/test_pass.py", "test_b.py"} do
    T.eq(res[path].success, false)
    T.match(res[path].output, "^runbox: the test runner ended early: runner broke")
  end
  -- a python that cannot be started at all
  local res2 = assert(eval.run_tests(sb, t, {timeout = 8, python = dir .. "/no-python"}))
  T.eq(res2["test_b.py"].success, false)
  T.match(res2["test_b.py"].output, "^runbox: ")
  fs.remove_tree(dir)
end)

T.run()
