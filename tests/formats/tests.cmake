# libFuzzer targets for the GGUF and safetensors readers (label 'fuzz'). They need clang with its
# fuzzer runtime (Debian: clang); the project's own compiler may be gcc, so they are compiled here
# with clang directly. Each ctest run fuzzes for a short fixed time from the seed corpus in
# tests/formats/fuzz/corpus (new inputs go to the build directory, never into the source tree);
# libFuzzer prints its seed. Run longer by hand with -max_total_time=N.
find_program(QFORGE_CLANGXX NAMES clang++ clang++-16 clang++-15 clang++-14)
set(_fuzz_dir ${CMAKE_CURRENT_LIST_DIR}/fuzz)
set(_fuzz_seconds 5)
foreach(_parser gguf safetensors)
  set(_name formats.fuzz_${_parser}_reader)
  if(NOT QFORGE_CLANGXX)
    add_test(NAME ${_name} COMMAND ${CMAKE_COMMAND} -E echo "SKIP: clang++ not found; install clang to run the ${_parser} fuzz target")
    set_tests_properties(${_name} PROPERTIES LABELS fuzz SKIP_REGULAR_EXPRESSION "SKIP:")
    continue()
  endif()
  set(_exe ${CMAKE_CURRENT_BINARY_DIR}/fuzz/qforge_fuzz_${_parser})
  string(TOUPPER ${_parser} _upper)
  file(GLOB_RECURSE _fuzz_headers CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/qforge/formats/*.hpp
       ${PROJECT_SOURCE_DIR}/include/qforge/core/*.hpp)
  add_custom_command(
    OUTPUT ${_exe}
    COMMAND ${QFORGE_CLANGXX} -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
            -DQFORGE_FUZZ_${_upper} -I${PROJECT_SOURCE_DIR}/include -I/usr/include/eigen3
            ${_fuzz_dir}/reader_fuzz.cpp -o ${_exe} -lfmt
    DEPENDS ${_fuzz_dir}/reader_fuzz.cpp ${_fuzz_headers}
    COMMENT "Building the ${_parser} libFuzzer target with clang"
    VERBATIM)
  add_custom_target(qforge_fuzz_${_parser} ALL DEPENDS ${_exe})
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/fuzz ${CMAKE_CURRENT_BINARY_DIR}/fuzz_new_${_parser})
  add_test(NAME ${_name}
           COMMAND ${_exe} -max_total_time=${_fuzz_seconds} -rss_limit_mb=2048 -print_final_stats=1
                   ${CMAKE_CURRENT_BINARY_DIR}/fuzz_new_${_parser} ${_fuzz_dir}/corpus/${_parser})
  set_tests_properties(${_name} PROPERTIES LABELS "formats;fuzz" TIMEOUT 120)
endforeach()
