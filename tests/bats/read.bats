load test_helper

# READ judges only the run RUN just made: its id and metrics checksum, from .run-record.json.
R=results/exp-001-toy-logreg

break_the_run() { sed -i 's|^python3 train.py.*|exit 4|' "$SPEC"; }

@test "run, then read: the analysis names the run and the checksum of its metrics" {
  EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  [[ "$output" == *"Verdict: CONFIRMED"* ]]
  run_id=$(python3 -c 'import json; print(json.load(open("'$R'/.run-record.json"))["run_id"])')
  [[ "$run_id" == local-exp-001-toy-logreg-* ]]
  grep -q "run $run_id (DONE); metrics.json sha256 $(sha256sum $R/metrics.json | cut -d' ' -f1)" $R/analysis.md
}

@test "a failed RUN after a good one: READ says INCONCLUSIVE with the cause, never the older numbers" {
  EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  break_the_run
  EXP_AGENT=scripted run -1 "$EXP" run "$SPEC"
  [ -f $R/metrics.json ]  # the older numbers are still there
  run -0 "$EXP" status
  [[ "$output" == *"exp-001-toy-logreg"*"(no verdict)"* ]]
  EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  [[ "$output" == *"Verdict: INCONCLUSIVE"* ]]
  grep -q "^Evidence: Not judged: RUN local-exp-001-toy-logreg-.* FAILED: the RUN agent exited 1." $R/analysis.md
  grep -q "| accuracy >= 0.90 | accuracy | - | >= 0.9 | NOT JUDGED |" $R/analysis.md
  # an LLM agent that says CONFIRMED all the same is refused, and its analysis set aside
  EXP_AGENT=claude run --separate-stderr -1 "$EXP" read "$SPEC"
  [[ "$stderr" == "experiment.sh: READ wrote CONFIRMED, but RUN local-exp-001-toy-logreg-"*" FAILED: the RUN agent exited 1; only INCONCLUSIVE can stand"* ]]
  [ -f $R/analysis.refused.md ] && [ ! -f $R/analysis.md ]
  # and its prompt said what to do
  last_call claude | grep -q 'So the verdict MUST be `## Verdict: INCONCLUSIVE`'
}

@test "a failed cloud run: RUN fails, READ says INCONCLUSIVE naming the run; a re-run that works is judged" {
  use_stub_tools
  STUB_CLOUD_RUN_EXIT=3 COMPUTE_TARGET=ec2 EXP_AGENT=scripted run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"RUN of exp-001-toy-logreg failed (exit 1): run stub-run-1 FAILED: command exited 3; see"* ]]
  COMPUTE_TARGET=ec2 EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  grep -q "^## Verdict: INCONCLUSIVE" $R/analysis.md
  grep -q "Not judged: RUN stub-run-1 FAILED: command exited 3" $R/analysis.md
  COMPUTE_TARGET=ec2 EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  COMPUTE_TARGET=ec2 EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  grep -q "^## Verdict: CONFIRMED" $R/analysis.md && grep -q "run stub-run-1 (DONE)" $R/analysis.md
}

@test "an LLM agent that says the cloud run went fine when it failed: RUN still fails" {
  use_stub_tools
  STUB_CLOUD_RUN_EXIT=3 COMPUTE_TARGET=ec2 EXP_AGENT=claude run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == "experiment.sh: RUN of exp-001-toy-logreg failed: run stub-run-1 FAILED: command exited 3; \`cloud-run logs stub-run-1\` shows why" ]]
}

@test "metrics.json edited by hand after RUN: INCONCLUSIVE, naming both checksums" {
  EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  sed -i 's/"accuracy": [0-9.]*/"accuracy": 0.99/' $R/metrics.json
  EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  [[ "$output" == *"Verdict: INCONCLUSIVE"* ]]
  grep -q "metrics.json is not what run local-exp-001-toy-logreg-.* produced (sha256 .* recorded, .* now): it was changed after RUN" $R/analysis.md
}

@test "READ without any RUN, or after an interrupted one: INCONCLUSIVE" {
  mkdir -p $R && echo '{"accuracy": 0.99, "baseline_gap": 0.5}' >$R/metrics.json
  EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  grep -q "Not judged: there is no record of a RUN for $R (.run-record.json)" $R/analysis.md
  stub_agent claude <<'STUB'
touch "$SANDBOX/agent-started"; exec sleep 30
STUB
  EXP_AGENT=claude "$EXP" run "$SPEC" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do [ -f "$SANDBOX/agent-started" ] && break; sleep 0.1; done
  kill -TERM "$pid"; wait "$pid" || true  # (a background job ignores SIGINT)
  EXP_AGENT=scripted run -0 "$EXP" read "$SPEC"
  grep -q "Not judged: RUN local-exp-001-toy-logreg-.*, started .*, never finished (interrupted, or still running)" $R/analysis.md
}

@test "cycle on ec2 with an LLM agent: the analysis names the run; sync_results updates the record after its pull" {
  use_stub_tools
  # the RUN agent's run was still going when RUN ended; sync_results pulls it once it has ended
  STUB_CLOUD_RUN_PHASE=RUN STUB_CLOUD_RUN_NO_METRICS=1 STUB_PULL_FINISHES=1 COMPUTE_TARGET=ec2 EXP_AGENT=claude \
    run -0 "$EXP" cycle "$SPEC"
  [[ "$output" == *"run stub-run-1 is RUNNING: it was still RUN when last pulled"* ]]
  [[ "$output" == *"Judged: the RUN begun "*", run stub-run-1 (DONE); metrics.json sha256 "* ]]
  [[ "$output" == *"Verdict: CONFIRMED"* ]]
  grep -q "^Judged: the RUN begun .*, run stub-run-1 (DONE); metrics.json sha256 $(sha256sum $R/metrics.json | cut -d' ' -f1)" $R/analysis.md
}

@test "program --overnight: a failed cycle leaves no verdict standing for its experiment" {
  EXP_AGENT=scripted run -0 "$EXP" cycle "$SPEC"
  break_the_run
  sed -i 's|^- \[x\] \(.*\) — verdict:.*|- [ ] \1|' QUESTIONS.md
  EXP_AGENT=scripted run -0 "$EXP" program --overnight --max-cycles 1
  [[ "$output" == *"cycle 1: FAILED"* ]]
  run -0 "$EXP" status
  [[ "$output" == *"exp-001-toy-logreg"*"(no verdict)"* ]]
  grep -q '"state": "FAILED"' $R/.run-record.json
}
