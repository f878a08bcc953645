# Script mode: install, relocate, consume. Fails on the first step that fails.
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test step failed (${rc}): ${ARGN}")
  endif()
endfunction()
file(REMOVE_RECURSE ${WORK_DIR})
step(${CMAKE_COMMAND} --install ${QFORGE_BUILD_DIR} --prefix ${WORK_DIR}/staging)
# Relocatable means nothing in the package remembers where it was installed.
file(RENAME ${WORK_DIR}/staging ${WORK_DIR}/moved-prefix)
step(${CMAKE_COMMAND} -S ${QFORGE_CONSUMER_SOURCE} -B ${WORK_DIR}/build -G ${GENERATOR}
     -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
     -DCMAKE_PREFIX_PATH=${WORK_DIR}/moved-prefix)
step(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
step(${WORK_DIR}/build/consumer)
step(${WORK_DIR}/build/xtensor_consumer)
