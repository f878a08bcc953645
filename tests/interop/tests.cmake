# Interop tests (label 'interop'): other tools' Python readers (gguf, safetensors) read what
# qforge writes and must see the same values. They need build/pyenv from scripts/python-env.sh
# (QFORGE_PYENV overrides the path) and report SKIPPED, saying why, when it is absent.
add_executable(qforge_interop_writer ${CMAKE_CURRENT_LIST_DIR}/write_samples.cpp)
target_link_libraries(qforge_interop_writer PRIVATE qforge::qforge)
qforge_set_warnings(qforge_interop_writer)

if(DEFINED ENV{QFORGE_PYENV})
  set(_qforge_pyenv "$ENV{QFORGE_PYENV}")
else()
  set(_qforge_pyenv "${PROJECT_SOURCE_DIR}/build/pyenv")
endif()
foreach(_check gguf safetensors)
  set(_name interop.${_check}_python_reader)
  add_test(NAME ${_name}
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/run_check.sh ${_qforge_pyenv} $<TARGET_FILE:qforge_interop_writer>
                   ${CMAKE_CURRENT_BINARY_DIR}/interop_${_check} ${CMAKE_CURRENT_LIST_DIR}/check_${_check}.py)
  set_tests_properties(${_name} PROPERTIES LABELS interop SKIP_RETURN_CODE 77 TIMEOUT 120)
endforeach()

# Qwix itself (scripts/qwix-env.sh adds qwix and CPU JAX to the environment): qforge's quantize and
# dequantize over qtypes, tilings and calibration methods against Qwix's, on seeded arrays.
add_executable(qforge_qwix_case_writer ${CMAKE_CURRENT_LIST_DIR}/write_qwix_cases.cpp)
target_link_libraries(qforge_qwix_case_writer PRIVATE qforge::qforge)
qforge_set_warnings(qforge_qwix_case_writer)
add_test(NAME interop.qwix_numerics
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/run_check.sh ${_qforge_pyenv} $<TARGET_FILE:qforge_qwix_case_writer>
                 ${CMAKE_CURRENT_BINARY_DIR}/interop_qwix ${CMAKE_CURRENT_LIST_DIR}/check_qwix.py "jax, qwix")
set_tests_properties(interop.qwix_numerics PROPERTIES LABELS interop SKIP_RETURN_CODE 77 TIMEOUT 300)
# The xtensor and Eigen interop headers (tests/interop/*_test.cpp) build against qforge::xtensor.
if(TARGET qforge_interop_tests)
  target_link_libraries(qforge_interop_tests PRIVATE qforge::xtensor)
endif()
