load test_helper

@test "status shows experiments, verdicts, questions and handoffs" {
  run -0 env EXP_AGENT=scripted "$EXP" status
  [[ "$output" == *"exp-001-toy-logreg"*"(not run)"* ]]
  [[ "$output" == *"questions: 1 open, 0 answered"* ]]
  EXP_AGENT=scripted "$EXP" cycle "$SPEC" >/dev/null
  run -0 "$EXP" status
  [[ "$output" == *"exp-001-toy-logreg"*"CONFIRMED"* ]]
  [[ "$output" == *"handoff: none"* ]]
}

@test "synthesize writes SYNTHESIS.md from what was logged" {
  EXP_AGENT=scripted "$EXP" cycle "$SPEC" >/dev/null
  EXP_AGENT=scripted run -0 "$EXP" synthesize "weekly review"
  grep -q 'weekly review' SYNTHESIS.md
  grep -q '| exp-001-toy-logreg | CONFIRMED |' SYNTHESIS.md
}

@test "survey with the scripted agent writes a survey and adds the question" {
  EXP_AGENT=scripted run -0 "$EXP" survey "Is the baseline gap robust to noise?"
  ls surveys/*-Is-the-baseline-gap-robust-to-noise.md
  grep -q '^- \[ \] Is the baseline gap robust to noise?' QUESTIONS.md
}

@test "validate-handoff names what is missing" {
  printf '# Handoff\n\n## Context\nx\n' >HANDOFF.md
  run --separate-stderr -1 "$EXP" validate-handoff
  [ "$stderr" = "experiment.sh: HANDOFF.md is missing: section '## Decision Needed', a 'Status: pending' line (see templates/handoff.md)" ]
  rm HANDOFF.md
  run --separate-stderr -1 "$EXP" complete-handoff
  [[ "$stderr" == *"HANDOFF.md does not exist"* ]]
}

@test "watch renders a stream-json phase log as readable lines" {
  EXP_AGENT=claude "$EXP" run "$SPEC" >/dev/null
  run -0 "$EXP" watch run
  [ "${lines[0]}" = "[init] stub" ]
  [ "${lines[1]}" = "working" ]
  [ "${lines[2]}" = "[done] stub RUN done" ]
  run --separate-stderr -1 "$EXP" watch survey
  [[ "$stderr" == *"no survey phase log"* ]]
}

@test "the state and log directories are configurable" {
  KIT_STATE_DIR="$SANDBOX/st" EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  [ -f "$SANDBOX/st/logs/run.log" ] && [ ! -d .kit-state ]
  EXP_LOG_DIR="$SANDBOX/lg" EXP_AGENT=scripted run -0 "$EXP" run "$SPEC"
  [ -f "$SANDBOX/lg/run.log" ]
}
