load test_helper

@test "COMPUTE_TARGET=ec2: RUN's prompt carries the mandatory directive, word for word" {
  use_stub_tools
  COMPUTE_TARGET=ec2 EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  last_call claude | sed -n '/^## Compute Directive/,/^- Local-only/p' >"$SANDBOX/got"
  here="$(pwd -P)"
  cat >"$SANDBOX/want" <<WANT
## Compute Directive (MANDATORY — EC2)
ALL training and heavy computation MUST run on EC2. Do NOT run model training locally.

Use cloud-run to execute the experiment:
  $SANDBOX/okit/tools/cloud-run run \\
      --backend ec2 \\
      --spec $here/$SPEC \\
      --output-dir $here/results/exp-001-toy-logreg/ \\
      --max-hours 0.1

Paste that command into the shell exactly as it is. cloud-run takes the experiment's command
from the spec's \`## Run\` block and runs it on the VM, where \$RESULTS_DIR is set:
'python3 train.py --out "\$RESULTS_DIR"'

IMPORTANT:
- Do NOT use --detach. Wait for the run to complete.
- After cloud-run finishes, pull results:
    $SANDBOX/okit/tools/cloud-run pull --backend ec2 "\$(cat $here/results/exp-001-toy-logreg/.cloud-run-id)" --output-dir $here/results/exp-001-toy-logreg/
- Write the cloud-run run-id to $here/results/exp-001-toy-logreg/.cloud-run-id (cloud-run run writes it for you).
- Verify metrics.json exists in $here/results/exp-001-toy-logreg/ before exiting.
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

@test "claude is called non-interactively with stream-json, per-phase tools, the guard hook and time limits" {
  EXP_AGENT=claude run -0 "$EXP" run "$SPEC"
  args=$(last_call claude)
  grep -qx -- '-p' <<<"$args"
  grep -qx -- '--output-format' <<<"$args" && grep -qx 'stream-json' <<<"$args" && grep -qx -- '--verbose' <<<"$args"
  # --tools restricts what is offered, --allowedTools pre-approves it: the same list
  [ "$(grep -A1 -x -- '--tools' <<<"$args" | tail -n1)" = 'Read,Grep,Glob,Write,Edit,Bash' ]
  [ "$(grep -A1 -x -- '--allowedTools' <<<"$args" | tail -n1)" = 'Read,Grep,Glob,Write,Edit,Bash' ]
  # the hook guards the spec and its frozen copy by absolute path
  grep -q '"PreToolUse"' <<<"$args" && grep -q "tools/guard-hook $PWD/$SPEC $PWD/results/exp-001-toy-logreg/spec.md" <<<"$args"
  env=$(last_env claude)
  for v in CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 \
    DISABLE_AUTOUPDATER=1 API_TIMEOUT_MS=300000 CLAUDE_CODE_MAX_RETRIES=3 BASH_MAX_TIMEOUT_MS=600000; do
    grep -qx "$v" <<<"$env"
  done
  grep -q '"type":"result"' .kit-state/logs/run.log
  [[ "$output" == *"stub RUN done"* ]]
  # FRAME: no Bash, no hook; the user's own API timeout wins over the kit's default
  API_TIMEOUT_MS=5000 EXP_AGENT=claude run -0 "$EXP" frame "$SPEC"
  [ "$(grep -A1 -x -- '--tools' <<<"$(last_call claude)" | tail -n1)" = 'Read,Grep,Glob,Write,Edit' ]
  ! grep -q -- '--settings' <<<"$(last_call claude)"
  grep -qx API_TIMEOUT_MS=5000 <<<"$(last_env claude)"
}

@test "codex runs with today's flags: a workspace-write sandbox, the guard hook, network only for a cloud RUN" {
  EXP_AGENT=codex run -0 "$EXP" frame "$SPEC"
  args=$(last_call codex)
  [ "$(head -n4 <<<"$args" | tr '\n' ' ')" = "exec --json --sandbox workspace-write " ]
  grep -qx 'approval_policy="never"' <<<"$args"
  grep -qx -- "--cd" <<<"$args" && grep -qx "$PWD" <<<"$args"
  ! grep -q -- '--skip-git-repo-check\|network_access\|hooks.PreToolUse' <<<"$args"  # a git repository; nothing to guard
  grep -q '# Phase: FRAME' <<<"$args"
  grep -q 'agent_message' .kit-state/logs/frame.log
  [[ "$output" == *"codex did it"* ]]
  rm -rf .git
  d=$PWD; while [ ! -e "$d/.git" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
  [ ! -e "$d/.git" ]  # nothing above the project is a repository either
  use_stub_tools
  COMPUTE_TARGET=sandbox EXP_AGENT=codex run -1 "$EXP" run "$SPEC"  # the stub makes no cloud run: RUN fails
  args=$(last_call codex)
  grep -qx -- '--skip-git-repo-check' <<<"$args"
  grep -qx 'sandbox_workspace_write.network_access=true' <<<"$args"
  [ "$(grep -A1 -x -- '--add-dir' <<<"$args" | tail -n1)" = "$RK_STATE_HOME" ]
  grep -qx -- '--dangerously-bypass-hook-trust' <<<"$args"
  grep -q "^hooks.PreToolUse=\[{matcher=\"Bash|apply_patch\", .*tools/guard-hook $PWD/$SPEC" <<<"$args"
  EXP_AGENT=codex run -0 "$EXP" run "$SPEC"  # a local RUN gets no network
  ! grep -q 'network_access' <<<"$(last_call codex)"
}

@test "an agent CLI outside the tested range: one warning line, once per invocation" {
  STUB_CLAUDE_VERSION=2.2.0 EXP_AGENT=claude run --separate-stderr -0 "$EXP" cycle "$SPEC"
  [ "$(grep -c 'warning' <<<"$stderr")" = 1 ]
  grep -qx 'experiment.sh: warning: claude 2.2.0 is outside the tested range (claude >=2.1.330 <2.2); if a phase fails, install a tested one: npm install -g @anthropic-ai/claude-code@2.1.330' <<<"$stderr"
  STUB_CODEX_VERSION=0.168.9 EXP_AGENT=codex run --separate-stderr -0 "$EXP" frame "$SPEC"
  [[ "$stderr" == *"warning: codex 0.168.9 is outside the tested range (codex >=0.169.0 <0.170)"* ]]
  EXP_AGENT=codex run --separate-stderr -0 "$EXP" frame "$SPEC"
  [[ "$stderr" != *warning* ]]
}

@test "an agent CLI that rejects a flag: one line naming the flag and the tested versions" {
  stub_agent codex <<'STUB'
echo "error: unexpected argument '--dangerously-bypass-hook-trust' found" >&2
exit 2
STUB
  STUB_CODEX_VERSION=0.160.0 EXP_AGENT=codex run --separate-stderr -1 "$EXP" run "$SPEC"
  [ "$(tail -n1 <<<"$stderr")" = "experiment.sh: codex 0.160.0 refused the flag --dangerously-bypass-hook-trust; researchkit is tested with codex >=0.169.0 <0.170: npm install -g @openai/codex@0.169.0" ]
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
  stub_agent claude <<'STUB'
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
  # The agent records its own pid and process group, and leaves a child in it: this test's
  # processes, not any other `sleep` on the machine.
  # It takes a second to stop, as an agent whose cloud-run stops its run does: experiment.sh
  # must wait for it.
  stub_agent claude <<'STUB'
trap 'sleep 1; echo stopped >"$SANDBOX/agent-stopped"; exit 143' TERM
sleep 37 &
echo "$$ $(ps -o pgid= -p $$ | tr -d ' ') $!" >"$SANDBOX/agent-started"
wait
STUB
  # A background job of a script starts with SIGINT ignored (and a trap cannot take it back):
  # --default-signal gives experiment.sh the Ctrl-C a terminal would.
  EXP_AGENT=claude env --default-signal=INT "$EXP" run "$SPEC" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -s "$SANDBOX/agent-started" ] && break; sleep 0.1; done
  read -r agent pgid child <"$SANDBOX/agent-started"
  kill -0 "$agent" && kill -0 "$child"  # both alive before the interrupt
  [ "$pgid" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]  # the agent leads a group of its own
  [ "$(stat -c %a "$SPEC")" = 444 ]
  kill -INT "$pid"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 130 ]
  [ -f "$SANDBOX/agent-stopped" ]  # experiment.sh returned after its agent had stopped
  [ "$(stat -c %a "$SPEC")" = 644 ]
  # experiment.sh returns once the agent's whole group is gone: nothing is left of it
  ! kill -0 "$agent" 2>/dev/null
  ! kill -0 "$child" 2>/dev/null
  ! kill -0 -- "-$pgid" 2>/dev/null
}

@test "a RUN past its time budget is stopped and metrics.json records the abort" {
  STUB_CLAUDE_SLEEP=20 EXP_TIME_BUDGET=1 EXP_AGENT=claude run --separate-stderr -1 "$EXP" run "$SPEC"
  [[ "$stderr" == *"exceeded its time budget (1s)"* ]]
  grep -q '"aborted": true' results/exp-001-toy-logreg/metrics.json
  [ -f results/exp-001-toy-logreg/metrics.partial.json ]  # what the run measured is kept
  grep -q '"subtype":"error_budget".*RUN ran past its time budget of 1 s' .kit-state/logs/run.log
}

@test "any phase past its budget is stopped, with the whole process group, and the log says so" {
  stub_agent claude <<'STUB'
sleep 41 &
wait
STUB
  EXP_PHASE_BUDGET=1 EXP_AGENT=claude run --separate-stderr -1 "$EXP" frame "$SPEC"
  [[ "$stderr" == *"experiment.sh: FRAME ran past its time budget (1s) and was stopped; see .kit-state/logs/frame.log"* ]]
  [[ "$output" == *"ERROR: researchkit stopped the agent: FRAME ran past its time budget of 1 s"* ]]
  sleep 0.2
  ! pgrep -f "sleep 41"
}

@test "the scripted agent obeys the directive: it pastes its command block into bash" {
  use_stub_tools
  COMPUTE_TARGET=ec2 EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  grep -qxF "cloud-run run --backend ec2 --spec $(pwd -P)/$SPEC --output-dir $(pwd -P)/results/exp-001-toy-logreg/ --max-hours 0.1" "$EVENTS"
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
