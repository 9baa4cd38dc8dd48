load test_helper

@test "COMPUTE_TARGET=ec2: RUN's prompt carries the mandatory directive, word for word" {
  use_stub_tools
  COMPUTE_TARGET=ec2 EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | sed -n '/^## Compute Directive/,/^- Local-only/p' >"$SANDBOX/got"
  cat >"$SANDBOX/want" <<WANT
## Compute Directive (MANDATORY — EC2)
ALL training and heavy computation MUST run on EC2. Do NOT run model training locally.

Use cloud-run to execute the experiment:
  $SANDBOX/okit/tools/cloud-run run "python3 train.py --out \\"\$RESULTS_DIR\\"" \\
      --backend ec2 \\
      --spec $SPEC \\
      --output-dir results/exp-001-toy-logreg/ \\
      --max-hours 0.1

IMPORTANT:
- Do NOT use --detach. Wait for the run to complete.
- After cloud-run finishes, pull results:
    $SANDBOX/okit/tools/cloud-run pull <run-id> --output-dir results/exp-001-toy-logreg/
- Write the cloud-run run-id to results/exp-001-toy-logreg/.cloud-run-id (cloud-run run writes it for you).
- Verify metrics.json exists in results/exp-001-toy-logreg/ before exiting.
- You may run the MVE (minimal viable experiment) locally for fast iteration,
  but the FULL experiment (all splits, all configs) MUST run on EC2.
- Local-only tasks (data loading verification, normalization checks, small sanity checks) are fine locally.
WANT
  diff "$SANDBOX/want" "$SANDBOX/got"
}

@test "gce and sandbox get their own mandatory directive; data dirs are shipped when present" {
  use_stub_tools
  mkdir data && echo 1 >data/x.csv
  COMPUTE_TARGET=gce EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | grep -qx '## Compute Directive (MANDATORY — GCE)'
  last_call claude | grep -q 'MUST run on a GCE VM'
  last_call claude | grep -qx -- '      --backend gce \\'
  last_call claude | grep -qx -- '      --data-dirs data/ \\'
  COMPUTE_TARGET=sandbox EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | grep -qx '## Compute Directive (MANDATORY — SANDBOX)'
  last_call claude | grep -qx -- '      --backend local \\'
}

@test "COMPUTE_TARGET unset or local: no directive, and the RUN prompt is identical" {
  use_stub_tools
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  ! last_call claude | grep -q 'Compute Directive'
  last_call claude >"$SANDBOX/unset"
  COMPUTE_TARGET=local EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude >"$SANDBOX/local"
  diff "$SANDBOX/unset" "$SANDBOX/local"
  ! grep -q cloud-run "$EVENTS"
}

@test "the .orchestration-kit.env file sets COMPUTE_TARGET; the environment wins" {
  use_stub_tools
  echo 'COMPUTE_TARGET="${COMPUTE_TARGET:-ec2}"' >.orchestration-kit.env
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | grep -q 'MANDATORY — EC2'
  COMPUTE_TARGET=local EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  ! last_call claude | grep -q 'Compute Directive'
}

@test "an env file that tries to run code is refused in one line" {
  echo 'COMPUTE_TARGET=$(rm -rf ~)' >.orchestration-kit.env
  EXP_AGENT=scripted run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == "experiment.sh: .orchestration-kit.env:1: COMPUTE_TARGET contains a command substitution"* ]]
}

@test "claude is called non-interactively with stream-json, per-phase tools, and the guard hook" {
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  args=$(last_call claude)
  grep -qx -- '-p' <<<"$args"
  grep -qx -- '--output-format' <<<"$args" && grep -qx 'stream-json' <<<"$args" && grep -qx -- '--verbose' <<<"$args"
  grep -qx 'Read,Grep,Glob,Write,Edit,Bash' <<<"$args"
  grep -q '"PreToolUse"' <<<"$args" && grep -q 'tools/guard-hook' <<<"$args"
  grep -q '"type":"result"' .kit-state/logs/run.log
  [[ "$output" == *"stub RUN done"* ]]
}

@test "codex runs in exec mode with JSON output and the same log discipline" {
  EXP_AGENT=codex run -0 "$EXP" frame "$SPEC"
  args=$(last_call codex)
  [ "$(head -n3 <<<"$args" | tr '\n' ' ')" = "exec --json --full-auto " ]
  grep -q '# Phase: FRAME' <<<"$args"
  grep -q 'agent_message' .kit-state/logs/frame.log
  [[ "$output" == *"codex did it"* ]]
}

@test "the spec is read-only during RUN and restored afterwards, even when RUN fails" {
  chmod 640 "$SPEC"
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  [ "$(cat "$SANDBOX/spec-mode-during-run")" = 444 ]
  [ "$(stat -c %a "$SPEC")" = 640 ]
  STUB_CLAUDE_FAIL=3 EXP_AGENT=claude run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"RUN of exp-001-toy-logreg failed (exit 3); see .kit-state/logs/run.log"* ]]
  [ "$(stat -c %a "$SPEC")" = 640 ]
  [ "$(stat -c %a results/exp-001-toy-logreg/spec.md)" = 444 ]  # the frozen copy stays frozen
}

@test "other experiments' results are locked during RUN, the current one's is not; all restored" {
  mkdir -p results/exp-000-old && echo '{}' >results/exp-000-old/metrics.json
  cat >"$SANDBOX/bin/claude" <<'STUB'
#!/usr/bin/env bash
# root ignores permission bits, so look at the bits themselves
{ [ "$(stat -c %a results/exp-000-old/metrics.json)" = 444 ] && echo old-locked || echo old-writable
  [ "$(stat -c %a results/exp-001-toy-logreg)" = 755 ] && echo current-writable || echo current-locked; } >"$SANDBOX/during"
echo '{"type":"result","result":"ok"}'
STUB
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  [ "$(cat "$SANDBOX/during")" = "$(printf 'old-locked\ncurrent-writable')" ]
  [ "$(stat -c %a results/exp-000-old/metrics.json)" = 644 ]
}

@test "Ctrl-C during RUN restores the spec and stops the agent" {
  cat >"$SANDBOX/bin/claude" <<'STUB'
#!/usr/bin/env bash
echo started >"$SANDBOX/agent-started"
exec sleep 37
STUB
  EXP_AGENT=claude "$EXP" run "$SPEC" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do [ -f "$SANDBOX/agent-started" ] && break; sleep 0.1; done
  [ "$(stat -c %a "$SPEC")" = 444 ]
  kill -INT "$pid"
  wait "$pid" || true
  [ "$(stat -c %a "$SPEC")" = 644 ]
  sleep 0.2
  ! pgrep -f "sleep 37"
}

@test "a RUN past its time budget is stopped and metrics.json records the abort" {
  STUB_CLAUDE_SLEEP=20 EXP_TIME_BUDGET=1 EXP_AGENT=claude run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"exceeded its time budget (1s)"* ]]
  grep -q '"aborted": true' results/exp-001-toy-logreg/metrics.json
  [ -f results/exp-001-toy-logreg/metrics.partial.json ]  # what the run measured is kept
}

@test "the scripted agent obeys the directive: it runs the spec's command through cloud-run" {
  use_stub_tools
  COMPUTE_TARGET=ec2 EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  grep -qxF "cloud-run run python3 train.py --out \"\$RESULTS_DIR\" --backend ec2 --spec $SPEC --output-dir results/exp-001-toy-logreg/ --max-hours 0.1" "$EVENTS"
}

@test "the scripted agent runs locally when the target is local" {
  EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  grep -q '"accuracy"' results/exp-001-toy-logreg/metrics.json
  [ ! -s "$EVENTS" ]
}

@test "a failing cloud run fails RUN: never reported as success" {
  use_stub_tools
  STUB_CLOUD_RUN_EXIT=3 COMPUTE_TARGET=ec2 EXP_AGENT=scripted run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"RUN of exp-001-toy-logreg failed"* ]]
}

@test "bad input: missing spec, no agent, unknown agent, bad target, no run command" {
  run --separate-stderr -1 "$EXP" run experiments/nope.md
  [ "$stderr" = "experiment.sh: spec experiments/nope.md not found; specs live in experiments/ (copy templates/experiment-spec.md)" ]
  rm "$SANDBOX/bin/claude"
  run --separate-stderr -1 "$EXP" run "$SPEC"
  [ "$stderr" = "experiment.sh: no agent: install Claude Code (npm install -g @anthropic-ai/claude-code) or set EXP_AGENT=scripted" ]
  EXP_AGENT=gpt run --separate-stderr -1 "$EXP" run "$SPEC"
  [ "$stderr" = "experiment.sh: EXP_AGENT=gpt is not one of claude, codex, scripted" ]
  COMPUTE_TARGET=azure EXP_AGENT=scripted run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == "experiment.sh: COMPUTE_TARGET=azure is not one of local, ec2, gce, sandbox"* ]]
  sed -i '/^```bash$/,/^```$/d' "$SPEC"
  EXP_AGENT=scripted run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"RUN of exp-001-toy-logreg failed"* ]]
  grep -q "has no command under '## Run'" .kit-state/logs/run.log
}

@test "local RUN gets the preflight advisory when a tools root is configured; a cloud target gets the directive instead" {
  ORCHESTRATION_KIT_ROOT="$KIT" EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | grep -qx '## Compute Advisory (preflight)'
  last_call claude | grep -qx 'Recommendation: LOCAL'
  ORCHESTRATION_KIT_ROOT="$KIT" COMPUTE_TARGET=ec2 EXP_AGENT=claude run "$EXP" run "$SPEC"  # no AWS here: the run fails
  ! last_call claude | grep -q 'Compute Advisory'
  last_call claude | grep -q 'Compute Directive (MANDATORY — EC2)'
}
