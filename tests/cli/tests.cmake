# The CLI tests run the built `qforge` binary, so it must exist before they run.
if(TARGET qforge_cli_tests AND TARGET qforge_cli)
  add_dependencies(qforge_cli_tests qforge_cli)
endif()
