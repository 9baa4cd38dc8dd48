load test_helper

# FRAME checks the criteria (one grammar, docs/specs.md) and reads orchestration-kit specs.
OKIT_SPEC="$BATS_TEST_DIRNAME/../py/specs/exp-004-okit-calibration.md"

@test "a typo, a unit or trailing words in a criterion: FRAME names the line, and nothing runs" {
  sed -i 's/^- \[ \] accuracy >= 0.90$/- [ ] accuracy >= 90%/; s/^- \[ \] baseline_gap >= 0.10$/- [ ] baseline_gap >= 0.1 over the majority/' "$SPEC"
  EXP_AGENT=scripted run --separate-stderr -1 "$EXP" cycle "$SPEC"
  [ "$stderr" = "experiment.sh: FRAME failed for $SPEC; see .kit-state/logs/frame.log" ]
  grep -q "line 20: 'accuracy >= 90%': a unit (%) after the number" .kit-state/logs/frame.log
  EXP_AGENT=claude run --separate-stderr -1 "$EXP" cycle "$SPEC"  # whatever the agent did, FRAME's own check
  [[ "$stderr" == "experiment.sh: $SPEC is not ready to run: line 20: 'accuracy >= 90%': a unit (%) after the number;"*"; line 21: 'baseline_gap >= 0.1 over the majority': words after the comparison ('over the majority'); put explanations outside the criterion;"* ]]
  [ "$(wc -l <<<"$stderr")" = 1 ] && [ ! -d results ]
  EXP_AGENT=claude run --separate-stderr -1 "$EXP" run "$SPEC"  # RUN on its own refuses too
  [[ "$stderr" == "experiment.sh: $SPEC: line 20: 'accuracy >= 90%': a unit (%)"* ]]
  [ ! -d results ] && ! grep -q "claude RUN" "$EVENTS"
}

@test "an orchestration-kit spec: FRAME passes for an LLM agent; the scripted agent names the section it needs" {
  cp "$OKIT_SPEC" experiments/
  spec=experiments/exp-004-okit-calibration.md
  EXP_AGENT=claude run -0 "$EXP" frame "$spec"
  EXP_AGENT=scripted run --separate-stderr -1 "$EXP" frame "$spec"
  grep -q "is not ready to run: missing a '## Run' section with the command in a \`\`\` block (the scripted agent runs only that; a protocol in prose needs an LLM agent)\"" .kit-state/logs/frame.log
  [[ "$stderr" == "experiment.sh: FRAME failed for $spec; see .kit-state/logs/frame.log" ]]
}

@test "an orchestration-kit spec with a Run block runs a whole cycle with the scripted agent" {
  spec=experiments/exp-004-okit-calibration.md
  sed '/^## Minimum Viable Experiment/i ## Run\n```bash\nmkdir -p "$RESULTS_DIR" \&\& echo '"'"'{"cv": {"brier_skill": {"gbt": 0.07, "logreg": 0.04}, "accuracy": {"gbt": 0.71, "logreg": 0.712}}, "sanity": {"label_rate": 0.33}}'"'"' >"$RESULTS_DIR/metrics.json"\n```\n' "$OKIT_SPEC" >"$spec"
  EXP_AGENT=scripted run -0 "$EXP" cycle "$spec"
  [[ "$output" == *"Verdict: CONFIRMED"* ]]
  grep -q '| \*\*SC-1\*\*: cv.brier_skill.gbt >= cv.brier_skill.logreg + 0.02 | cv.brier_skill.gbt | 0.07 | >= cv.brier_skill.logreg + 0.02 (= 0.06) | PASS |' \
    results/exp-004-okit-calibration/analysis.md
}
