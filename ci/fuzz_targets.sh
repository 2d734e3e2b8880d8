# Sourced by ci/fuzz: one function per coverage-guided target, so that each target's run is a
# test result for hirte-trace (ci/fuzz writes them as libtest JSON lines named after these
# functions to target/fuzz/results.json) and can carry a coverage tag like a test.
# `fuzz_target NAME` (defined in ci/fuzz) runs one target and records its result.

# [utest->req~fault.fuzz~1]
fuzz_frame_decoder() {
  fuzz_target frame_decoder
}

# [utest->req~fault.fuzz~1]
fuzz_register_check() {
  fuzz_target register_check
}

# [utest->req~fault.fuzz~1]
fuzz_config_parse() {
  fuzz_target config_parse
}

fuzz_ctl_args() {
  fuzz_target ctl_args
}

# [utest->req~fault.fuzz~1]
fuzz_agent_dispatch() {
  fuzz_target agent_dispatch
}

# [utest->req~fault.fuzz~1]
fuzz_manager_on_frame() {
  fuzz_target manager_on_frame
}
