# The package test: install this build into a prefix, move the prefix elsewhere (relocatable),
# then configure, build and run tests/package against it with find_package(qforge).
add_test(NAME package.consumer
  COMMAND ${CMAKE_COMMAND}
    -DQFORGE_BUILD_DIR=${PROJECT_BINARY_DIR}
    -DQFORGE_CONSUMER_SOURCE=${CMAKE_CURRENT_LIST_DIR}
    -DWORK_DIR=${PROJECT_BINARY_DIR}/package-test
    -DGENERATOR=${CMAKE_GENERATOR}
    -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
    -P ${CMAKE_CURRENT_LIST_DIR}/run_package_test.cmake)
set_tests_properties(package.consumer PROPERTIES LABELS package TIMEOUT 600)
