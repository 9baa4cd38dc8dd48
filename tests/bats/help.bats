load test_helper

COMMANDS="survey frame run read log cycle full batch program status synthesize validate-handoff complete-handoff watch help"

@test "help lists exactly the commands" {
  run -0 "$EXP" help
  listed=$(sed -n 's/^  \([a-z-]*\) .*/\1/p' <<<"$output" | grep -v '^$' | tr '\n' ' ')
  [ "$listed" = "$COMMANDS " ]
}

@test "help is the same whatever COMPUTE_TARGET says" {
  run -0 "$EXP" help
  plain="$output"
  for target in local ec2 gce sandbox; do
    run -0 env COMPUTE_TARGET=$target "$EXP" help
    [ "$output" = "$plain" ]
  done
  echo "COMPUTE_TARGET=ec2" >.orchestration-kit.env
  run -0 "$EXP" --help
  [ "$output" = "$plain" ]
}

@test "no command prints help; an unknown command is a usage error" {
  run -0 "$EXP"
  [[ "$output" == usage:* ]]
  run --separate-stderr -2 "$EXP" frobnicate
  [[ "${stderr_lines[0]}" == "experiment.sh: unknown command 'frobnicate'" ]]
}

@test "a missing argument is a usage error naming the command" {
  run --separate-stderr -2 "$EXP" cycle
  [ "${stderr_lines[0]}" = "experiment.sh: missing the spec file" ]
  [ "${stderr_lines[1]}" = "usage: experiment.sh cycle <spec>" ]
  run --separate-stderr -2 "$EXP" full "only a question"
  [[ "$stderr" == *"usage: experiment.sh full <question> <spec>"* ]]
}
